<?php
/**
 * PUQ Proxmox KVM: WHMCS hooks (loaded by WHMCS for the active addon).
 *
 * AfterCronJob: after every run of WHMCS's cron, tell the product (signed, as every bridge call). In the
 * product's "WHMCS Hook" cron mode (Settings > Cron Settings) that starts a tick, as the original module
 * ran its cron tasks with WHMCS's cron; in "Standalone" mode the product's own scheduler runs them and
 * the call changes nothing.
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

require_once __DIR__ . '/../../servers/puqProxmoxKVM/lib/Bridge.php';

add_hook('AfterCronJob', 1, function ($vars) {
    $bridge = \PuqProxmoxKVM\Bridge::fromSettings();
    if ($bridge->configurationProblem() !== '') {
        return; // not configured yet: the server module says so where an admin reads it
    }
    $result = $bridge->call('AfterCronJob', []);
    if (!function_exists('logActivity')) {
        return;
    }
    if ($result['status'] !== 200) {
        logActivity('PUQ Proxmox KVM: the cron hook did not reach the product at ' . $result['url'] . ': '
            . ($result['error'] !== '' ? $result['error'] : 'HTTP ' . $result['status']));
    } elseif (!is_array($result['body']) || !isset($result['body']['result']) || $result['body']['result'] !== 'success') {
        // reached, but no tick was started (its queue is down, say): the product's reason
        $message = is_array($result['body']) && isset($result['body']['message']) && is_scalar($result['body']['message'])
            ? (string) $result['body']['message'] : 'an unexpected answer';
        logActivity('PUQ Proxmox KVM: the cron hook reached the product, which started no tick: ' . $message);
    }
});
