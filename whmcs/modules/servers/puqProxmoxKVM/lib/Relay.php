<?php
/**
 * One WHMCS module call relayed to the bridge: the answer turned into WHMCS's return conventions and
 * the call written to the module log with every secret masked.
 */

namespace PuqProxmoxKVM;

final class Relay
{
    const MODULE = 'puqProxmoxKVM';
    const MASK = '********';
    const SETTINGS_PAGE = 'Setup > Addon Modules > PUQ Proxmox KVM';
    /** $params keys whose values are never logged. */
    const SECRET_KEYS = ['password', 'serverpassword', 'serveraccesshash'];

    /** @var Bridge */
    private $bridge;

    public function __construct(?Bridge $bridge = null)
    {
        $this->bridge = $bridge !== null ? $bridge : Bridge::fromSettings();
    }

    /** Relay an action with the configured bridge: 'success' or the message the admin reads. */
    public static function run($function, array $params)
    {
        return (new self())->action($function, $params);
    }

    /** TestConnection with the configured bridge: ['success' => bool, 'error' => string]. */
    public static function test(array $params)
    {
        return (new self())->testConnection($params);
    }

    /** AdminServicesTabFields with the configured bridge. */
    public static function tab(array $params)
    {
        return (new self())->serviceTab($params);
    }

    /**
     * What the service's admin page shows of its VM: label => HTML, every text escaped here. Never an
     * exception, never an empty page: WHMCS draws the service page around it, whatever the bridge says.
     */
    public function serviceTab(array $params)
    {
        $secrets = $this->secrets($params);
        $message = '';
        try {
            $message = $this->bridge->configurationProblem();
            if ($message === '') {
                $answer = $this->bridge->call('AdminServicesTabFields', $params);
                $body = $answer['body'];
                if ($answer['status'] === 200 && is_array($body) && isset($body['fields']) && is_array($body['fields'])) {
                    $rows = [];
                    foreach ($body['fields'] as $pair) {
                        if (is_array($pair) && count($pair) === 2 && is_scalar($pair[0]) && is_scalar($pair[1])) {
                            $rows[self::html((string) $pair[0])] = self::html(self::scrub((string) $pair[1], $secrets));
                        }
                    }
                    $panel = $this->bridge->url() . '/vms?q=' . rawurlencode((string) ($params['serviceid'] ?? ''));
                    $rows['PUQ Proxmox KVM'] = '<a href="' . self::html($panel) . '" target="_blank" '
                        . 'rel="noopener noreferrer">VM Management in the panel</a>';
                    return $rows;
                }
                $message = $this->interpret('AdminServicesTabFields', $answer, false);
            }
        } catch (\Throwable $e) {
            $message = 'could not ask the bridge: ' . $e->getMessage();
        }
        $message = is_string($message) && $message !== '' ? $message : 'Unexpected answer from the bridge.';
        return ['PUQ Proxmox KVM' => self::html(self::scrub($message, $secrets))];
    }

    private static function html($text)
    {
        return htmlspecialchars($text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
    }

    /** An action (CreateAccount, Start, ...): the string 'success' or the message the admin reads. */
    public function action($function, array $params)
    {
        $result = $this->relay($function, $params, false);
        return is_string($result) ? $result : 'Unexpected answer from the bridge.';
    }

    /** TestConnection: ['success' => bool, 'error' => string]. */
    public function testConnection(array $params)
    {
        $result = $this->relay('TestConnection', $params, true);
        if (is_string($result)) {
            return ['success' => false, 'error' => $result];
        }
        return $result;
    }

    private function relay($function, array $params, $isTest)
    {
        $secrets = $this->secrets($params);
        $url = $this->bridge->endpoint($function);
        $raw = '';
        try {
            $problem = $this->bridge->configurationProblem();
            if ($problem !== '') {
                $result = $problem;
            } else {
                $answer = $this->bridge->call($function, $params);
                $raw = $answer['error'] !== '' ? $answer['error'] : $answer['raw'];
                $result = $this->interpret($function, $answer, $isTest);
            }
        } catch (\Throwable $e) {
            $result = 'PUQ Proxmox KVM could not relay ' . $function . ' to the bridge: ' . $e->getMessage();
        }
        if ($isTest && is_string($result)) {
            $result = ['success' => false, 'error' => $result];
        }
        $result = self::scrub($result, $secrets);
        // The raw answer is only logged: every occurrence is masked there, inside words and JSON escapes too.
        $this->log($function, $url, $params, self::scrub($raw, $secrets, true), $result, $secrets);
        return $result;
    }

    /** WHMCS's return value for one answer of the bridge. */
    private function interpret($function, array $answer, $isTest)
    {
        $url = $answer['url'];
        if ($answer['timed_out'] > 0) {
            return 'The bridge at ' . $url . ' took the call but did not answer within ' . $answer['timed_out']
                . ' s: it may still be carrying it out. Look at the service in the panel\'s VM Management ('
                . 'Addons > PUQ Proxmox KVM) before trying again.';
        }
        if ($answer['error'] !== '') {
            return 'The bridge is unreachable at ' . $url . ': ' . $answer['error'] . '. Check the Bridge URL in '
                . self::SETTINGS_PAGE . ' and that the product is running.';
        }
        $status = $answer['status'];
        $body = $answer['body'];
        $message = is_array($body) && isset($body['message']) && is_scalar($body['message'])
            ? trim((string) $body['message']) : '';
        if ($status === 200 && is_array($body)) {
            if ($isTest && array_key_exists('success', $body)) {
                $error = isset($body['error']) && is_scalar($body['error']) ? (string) $body['error'] : '';
                if (!$body['success'] && $error === '') {
                    $error = 'The connection test failed without a reason.';
                }
                return ['success' => (bool) $body['success'], 'error' => $body['success'] ? '' : $error];
            }
            $outcome = isset($body['result']) ? $body['result'] : null;
            if ($outcome === 'success') {
                return 'success';
            }
            if ($outcome === 'error') {
                return $message !== '' ? $message : 'The bridge reported an error without a message.';
            }
        }
        if ($status === 400 && is_array($body)) {
            $errors = isset($body['errors']) && is_array($body['errors']) ? $body['errors'] : [];
            $fields = [];
            foreach ($errors as $field => $problem) {
                $fields[] = $field . ': ' . (is_scalar($problem) ? $problem : json_encode($problem));
            }
            return 'The bridge refused the parameters of ' . $function . ' (' . ($message ?: 'malformed payload')
                . '): ' . ($fields ? implode('; ', $fields) : 'no details given') . '.';
        }
        if ($status === 401) {
            $reason = preg_replace('/^unauthorized:\s*/i', '', $message);
            return 'The bridge refused the call as unauthorized' . ($reason !== '' ? ' (' . $reason . ')' : '')
                . ': check that the Bridge Secret in ' . self::SETTINGS_PAGE . ' is the shared secret '
                . '`flask bridge secret` prints on the product server, and that the clocks of WHMCS and the '
                . 'product server agree.';
        }
        if ($status === 404 && is_array($body) && isset($body['functions']) && is_array($body['functions'])) {
            return 'The bridge does not implement ' . $function . ' (it offers: '
                . implode(', ', array_map('strval', $body['functions'])) . ').';
        }
        if ($status === 404) {
            return 'Nothing answers as the bridge at ' . $url . ' (HTTP 404): check the Bridge URL in '
                . self::SETTINGS_PAGE . '.';
        }
        $detail = $message !== '' ? $message : self::snippet($answer['raw']);
        return 'The bridge at ' . $url . ' answered HTTP ' . $status . ($detail !== '' ? ': ' . $detail : '') . '.';
    }

    private static function snippet($raw)
    {
        $text = trim(preg_replace('/\s+/', ' ', strip_tags((string) $raw)));
        return strlen($text) > 200 ? substr($text, 0, 200) . '...' : $text;
    }

    /** The secret values of this call, longest first: the bridge secret, the token secret, the password. */
    private function secrets(array $params)
    {
        $values = [$this->bridge->secret()];
        foreach (['serverpassword', 'password'] as $key) {
            if (isset($params[$key]) && is_scalar($params[$key])) {
                $values[] = (string) $params[$key];
            }
        }
        $secrets = [];
        foreach ($values as $value) {
            if ($value === '') {
                continue;
            }
            $secrets[] = $value;
            $escaped = substr((string) json_encode($value, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES), 1, -1);
            if ($escaped !== '' && $escaped !== $value) {
                $secrets[] = $escaped; // as it would appear inside a JSON answer
            }
        }
        $secrets = array_values(array_unique($secrets));
        usort($secrets, function ($a, $b) {
            return strlen($b) - strlen($a);
        });
        return $secrets;
    }

    /**
     * $value with every secret replaced by the mask, strings inside arrays included. A short secret (under
     * 8 characters) is masked only where it stands on its own, not inside a longer word: a password "on"
     * would otherwise turn "connect" into "c********nect". ``$everywhere``: every occurrence (a text only
     * logged, never read as a message).
     */
    private static function scrub($value, array $secrets, $everywhere = false)
    {
        if (is_string($value)) {
            foreach ($secrets as $secret) {
                if ($everywhere || strlen($secret) >= 8) {
                    $value = str_replace($secret, self::MASK, $value);
                } else {
                    $masked = preg_replace('/(?<![\p{L}\p{N}])' . preg_quote($secret, '/') . '(?![\p{L}\p{N}])/u',
                        self::MASK, $value);
                    $value = $masked === null ? str_replace($secret, self::MASK, $value) : $masked; // not UTF-8
                }
            }
            return $value;
        }
        if (is_array($value)) {
            foreach ($value as $key => $item) {
                $value[$key] = self::scrub($item, $secrets, $everywhere);
            }
        }
        return $value;
    }

    /** What is sent, for the log: secret keys masked, secret values scrubbed everywhere. */
    private static function masked(array $params, array $secrets)
    {
        $masked = [];
        foreach ($params as $key => $value) {
            if ($value instanceof \stdClass) {
                $value = (array) $value; // a map Bridge::clean made an object so that it encodes as {}
            }
            $name = strtolower((string) $key);
            if (in_array($name, self::SECRET_KEYS, true) || strpos($name, 'password') !== false
                || strpos($name, 'secret') !== false) {
                $masked[$key] = ($value === null || $value === '') ? $value : self::MASK;
            } elseif (is_array($value)) {
                $masked[$key] = self::masked($value, $secrets);
            } elseif ($value === null || is_scalar($value)) {
                $masked[$key] = self::scrub($value, $secrets);
            }
        }
        return $masked;
    }

    private function log($function, $url, array $params, $raw, $processed, array $secrets)
    {
        if (!function_exists('logModuleCall')) {
            return;
        }
        try {
            $sent = Bridge::clean($params);
        } catch (\Throwable $e) {
            $sent = [];
        }
        $request = ['url' => $url, 'params' => self::masked($sent, $secrets)];
        try {
            logModuleCall(self::MODULE, $function, $request, $raw, $processed, $secrets);
        } catch (\Throwable $e) {
            // The module log is best effort: a failure to write it never fails the call.
        }
    }
}
