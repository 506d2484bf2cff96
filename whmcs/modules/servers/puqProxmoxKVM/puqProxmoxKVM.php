<?php
/**
 * PUQ Proxmox KVM: WHMCS server module.
 *
 * A thin relay: every module function posts its $params, signed, to the product's bridge
 * (POST <Bridge URL>/bridge/v1/module/<Function>) and hands WHMCS the answer. Provisioning, Proxmox
 * access and the VM lifecycle all run in the product; nothing here decides anything.
 *
 * The bridge URL and shared secret come from the constants or environment variables PKVM_BRIDGE_URL and
 * PKVM_BRIDGE_SECRET when set, otherwise from the addon module puq_proxmox_kvm (Setup > Addon Modules).
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

require_once __DIR__ . '/lib/Bridge.php';
require_once __DIR__ . '/lib/Relay.php';

function puqProxmoxKVM_MetaData()
{
    return [
        'DisplayName' => 'PUQ Proxmox KVM',
        'APIVersion' => '1.1',
        'RequiresServer' => true,
        'DefaultNonSSLPort' => '8006',
        'DefaultSSLPort' => '8006',
    ];
}

function puqProxmoxKVM_CreateAccount(array $params)
{
    return \PuqProxmoxKVM\Relay::run('CreateAccount', $params);
}

function puqProxmoxKVM_SuspendAccount(array $params)
{
    return \PuqProxmoxKVM\Relay::run('SuspendAccount', $params);
}

function puqProxmoxKVM_UnsuspendAccount(array $params)
{
    return \PuqProxmoxKVM\Relay::run('UnsuspendAccount', $params);
}

function puqProxmoxKVM_TerminateAccount(array $params)
{
    return \PuqProxmoxKVM\Relay::run('TerminateAccount', $params);
}

function puqProxmoxKVM_ChangePackage(array $params)
{
    return \PuqProxmoxKVM\Relay::run('ChangePackage', $params);
}

function puqProxmoxKVM_ChangePassword(array $params)
{
    return \PuqProxmoxKVM\Relay::run('ChangePassword', $params);
}

/** ['success' => bool, 'error' => string] */
function puqProxmoxKVM_TestConnection(array $params)
{
    return \PuqProxmoxKVM\Relay::test($params);
}

/** The service's admin page: its VM (status, VMID and node, addresses, how it is doing now, last run and
 * error) and a link to it in the panel; label => HTML. */
function puqProxmoxKVM_AdminServicesTabFields(array $params)
{
    return \PuqProxmoxKVM\Relay::tab($params);
}

/**
 * Buttons on the service's admin page: label => function suffix. After the everyday ones, the original's
 * commands that run one deploy step on their own (the VM's status is left as it is).
 */
function puqProxmoxKVM_AdminCustomButtonArray()
{
    return [
        'Start' => 'Start',
        'Stop' => 'Stop',
        'Reset password' => 'ResetPassword',
        'Reinstall' => 'Reinstall',
        'Set DNS records' => 'SetDNSRecords',
        'Redeploy' => 'Redeploy',
        'VMSetDedicatedIp' => 'VMSetDedicatedIp',
        'VMSetDNSRecords' => 'VMSetDNSRecords',
        'VMClone' => 'VMClone',
        'migrateToTargetNode' => 'migrateToTargetNode',
        'VMSetCpuRam' => 'VMSetCpuRam',
        'VMSetSystemDiskSize' => 'VMSetSystemDiskSize',
        'VMSetSystemDiskBandwidth' => 'VMSetSystemDiskBandwidth',
        'VMSetCreatedAdditionalDisk' => 'VMSetCreatedAdditionalDisk',
        'VMSetAdditionalDiskSize' => 'VMSetAdditionalDiskSize',
        'VMSetAdditionalDiskBandwidth' => 'VMSetAdditionalDiskBandwidth',
        'VMSetNetwork' => 'VMSetNetwork',
        'VMSetFirewall' => 'VMSetFirewall',
        'VMSetCloudinit' => 'VMSetCloudinit',
        'VMStart' => 'VMStart',
    ];
}

function puqProxmoxKVM_Start(array $params)
{
    return \PuqProxmoxKVM\Relay::run('Start', $params);
}

function puqProxmoxKVM_Stop(array $params)
{
    return \PuqProxmoxKVM\Relay::run('Stop', $params);
}

function puqProxmoxKVM_Reinstall(array $params)
{
    return \PuqProxmoxKVM\Relay::run('Reinstall', $params);
}

function puqProxmoxKVM_SetDNSRecords(array $params)
{
    return \PuqProxmoxKVM\Relay::run('SetDNSRecords', $params);
}

function puqProxmoxKVM_Redeploy(array $params)
{
    return \PuqProxmoxKVM\Relay::run('Redeploy', $params);
}

function puqProxmoxKVM_ResetPassword(array $params)
{
    return \PuqProxmoxKVM\Relay::run('ResetPassword', $params);
}

// One deploy step each, run by the product on the VM as it is.

function puqProxmoxKVM_VMSetDedicatedIp(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetDedicatedIp', $params);
}

function puqProxmoxKVM_VMSetDNSRecords(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetDNSRecords', $params);
}

function puqProxmoxKVM_VMClone(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMClone', $params);
}

function puqProxmoxKVM_migrateToTargetNode(array $params)
{
    return \PuqProxmoxKVM\Relay::run('migrateToTargetNode', $params);
}

function puqProxmoxKVM_VMSetCpuRam(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetCpuRam', $params);
}

function puqProxmoxKVM_VMSetSystemDiskSize(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetSystemDiskSize', $params);
}

function puqProxmoxKVM_VMSetSystemDiskBandwidth(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetSystemDiskBandwidth', $params);
}

function puqProxmoxKVM_VMSetCreatedAdditionalDisk(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetCreatedAdditionalDisk', $params);
}

function puqProxmoxKVM_VMSetAdditionalDiskSize(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetAdditionalDiskSize', $params);
}

function puqProxmoxKVM_VMSetAdditionalDiskBandwidth(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetAdditionalDiskBandwidth', $params);
}

function puqProxmoxKVM_VMSetNetwork(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetNetwork', $params);
}

function puqProxmoxKVM_VMSetFirewall(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetFirewall', $params);
}

function puqProxmoxKVM_VMSetCloudinit(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMSetCloudinit', $params);
}

function puqProxmoxKVM_VMStart(array $params)
{
    return \PuqProxmoxKVM\Relay::run('VMStart', $params);
}
