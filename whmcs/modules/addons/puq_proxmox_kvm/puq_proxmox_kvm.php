<?php
/**
 * PUQ Proxmox KVM: WHMCS addon module.
 *
 * Holds where the product's bridge is and the shared secret the server module signs its calls with
 * (stored by WHMCS in tbladdonmodules as settings `bridge_url` and `bridge_secret`). The admin panel
 * itself is the product's own web UI; this page only links to it.
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

require_once __DIR__ . '/../../servers/puqProxmoxKVM/lib/Bridge.php';

function puq_proxmox_kvm_config()
{
    return [
        'name' => 'PUQ Proxmox KVM',
        'description' => 'Connects the puqProxmoxKVM server module to the PUQ Proxmox KVM product, which '
            . 'provisions and manages the VMs. Set where the product listens and its bridge secret.',
        'author' => 'PUQ Proxmox KVM',
        'language' => 'english',
        'version' => '1.0',
        'fields' => [
            'bridge_url' => [
                'FriendlyName' => 'Bridge URL',
                'Type' => 'text',
                'Size' => '60',
                'Default' => '',
                'Description' => 'Where the product listens, e.g. https://pkvm.example.com (no trailing path).',
            ],
            'bridge_secret' => [
                'FriendlyName' => 'Bridge Secret',
                'Type' => 'password',
                'Size' => '70',
                'Default' => '',
                'Description' => 'The shared secret printed by <code>flask bridge secret</code> on the product server.',
            ],
        ],
    ];
}

function puq_proxmox_kvm_activate()
{
    return [
        'status' => 'success',
        'description' => 'PUQ Proxmox KVM is active: click Configure, then paste the Bridge URL and the Bridge Secret.',
    ];
}

/**
 * Tells the product (signed). With its setting "Delete all database tables when module is deactivated" on,
 * the product deletes the module's data (pools, zones, VM records, logs, settings); otherwise nothing changes.
 */
function puq_proxmox_kvm_deactivate()
{
    $description = 'PUQ Proxmox KVM is deactivated. The product and its data are untouched.';
    $bridge = \PuqProxmoxKVM\Bridge::fromSettings();
    if ($bridge->configurationProblem() === '') {
        $result = $bridge->call('AddonDeactivate', []);
        $answer = is_array($result['body'] ?? null) ? $result['body'] : [];
        if ($result['status'] !== 200) {
            $description = 'PUQ Proxmox KVM is deactivated; the product at ' . $result['url'] . ' was not told ('
                . ($result['error'] !== '' ? $result['error'] : 'HTTP ' . $result['status']) . '): its data is untouched.';
        } elseif (!empty($answer['deleted'])) {
            $description = 'PUQ Proxmox KVM is deactivated and, as its settings ask, the module\'s data was deleted '
                . 'in the product (pools, DNS zones, VM records, logs, settings). Proxmox was not touched.';
        }
    }
    return ['status' => 'success', 'description' => $description];
}

function puq_proxmox_kvm_output($vars)
{
    $url = '';
    if (defined('PKVM_BRIDGE_URL') && (string) constant('PKVM_BRIDGE_URL') !== '') {
        $url = (string) constant('PKVM_BRIDGE_URL');
    } elseif (getenv('PKVM_BRIDGE_URL')) {
        $url = (string) getenv('PKVM_BRIDGE_URL');
    } elseif (isset($vars['bridge_url'])) {
        $url = (string) $vars['bridge_url'];
    }
    $url = rtrim(trim($url), '/');
    if (!preg_match('#^https?://[^/\s]+#i', $url)) {
        echo '<div class="alert alert-warning">The Bridge URL is not set: open Setup &gt; Addon Modules &gt; '
            . 'PUQ Proxmox KVM &gt; Configure and enter where the product listens.</div>';
        return;
    }
    $safe = htmlspecialchars($url . '/', ENT_QUOTES, 'UTF-8');
    echo '<p>The PUQ Proxmox KVM panel (VM management, IP pools, DNS, cron, logs) lives in the product\'s own '
        . 'web UI: <a href="' . $safe . '" target="_blank" rel="noopener noreferrer">' . $safe . '</a></p>';
}
