<?php
/**
 * The signed HTTP bridge to the PUQ Proxmox KVM product: where it is, how a call is encoded and signed,
 * and one POST per module call. No business logic lives here.
 *
 * A call is `POST <bridge url>/bridge/v1/module/<Function>` with the WHMCS $params as a JSON object and
 *
 *     X-Bridge-Timestamp: unix seconds
 *     X-Bridge-Nonce:     32 hex characters from random_bytes, never reused
 *     X-Bridge-Signature: hex(HMAC-SHA256(secret, timestamp "\n" nonce "\n" "POST" "\n" path "\n" body))
 *
 * where path is `/bridge/v1/module/<Function>` (never any path prefix of the bridge URL) and body is the
 * exact bytes sent.
 */

namespace PuqProxmoxKVM;

final class Bridge
{
    const ADDON = 'puq_proxmox_kvm';
    const PATH_PREFIX = '/bridge/v1/module/';
    /** $params keys the bridge reads as objects (maps of scalars), never as lists. */
    const MAP_KEYS = ['configoptions', 'customfields', 'clientsdetails'];

    /** @var string */
    private $url;
    /** @var string */
    private $secret;
    /** @var int */
    private $connectTimeout;
    /** @var int */
    private $timeout;

    public function __construct($url, $secret, $connectTimeout = 5, $timeout = 30)
    {
        $this->url = rtrim(trim((string) $url), '/');
        $this->secret = (string) $secret;
        $this->connectTimeout = (int) $connectTimeout;
        $this->timeout = (int) $timeout;
    }

    /**
     * The bridge as configured: the constants or environment variables PKVM_BRIDGE_URL and
     * PKVM_BRIDGE_SECRET first, then the settings of the addon module (Setup > Addon Modules).
     */
    public static function fromSettings()
    {
        $addon = null;
        $read = function ($name, $setting) use (&$addon) {
            if (defined($name) && (string) constant($name) !== '') {
                return (string) constant($name);
            }
            $env = getenv($name);
            if ($env !== false && $env !== '') {
                return $env;
            }
            if ($addon === null) {
                $addon = self::addonSettings();
            }
            return isset($addon[$setting]) ? $addon[$setting] : '';
        };
        // PKVM_BRIDGE_TIMEOUT (a constant in configuration.php or the environment): seconds a call may
        // take, 30 by default; the bridge answers its one-step commands within 25 s.
        $timeout = (int) $read('PKVM_BRIDGE_TIMEOUT', 'bridge_timeout');
        return new self($read('PKVM_BRIDGE_URL', 'bridge_url'), $read('PKVM_BRIDGE_SECRET', 'bridge_secret'),
            5, $timeout > 0 ? $timeout : 30);
    }

    /** The addon's settings from tbladdonmodules (only inside WHMCS). */
    public static function addonSettings()
    {
        $capsule = 'WHMCS\\Database\\Capsule';
        if (!class_exists($capsule)) {
            return [];
        }
        try {
            $rows = $capsule::table('tbladdonmodules')->where('module', self::ADDON)
                ->whereIn('setting', ['bridge_url', 'bridge_secret'])->pluck('value', 'setting');
        } catch (\Throwable $e) {
            return [];
        }
        $settings = [];
        foreach ($rows as $setting => $value) {
            $settings[$setting] = self::plain((string) $value);
        }
        return $settings;
    }

    /**
     * A stored setting in clear. Should WHMCS keep a password field encrypted, its own decrypt() gives it
     * back; a value that does not decrypt to printable text is already clear (the secret `flask bridge
     * secret` prints is 64 hex characters, which never decrypt to printable text).
     */
    private static function plain($value)
    {
        if ($value === '' || !function_exists('decrypt') || base64_decode($value, true) === false) {
            return $value;
        }
        try {
            $clear = decrypt($value);
        } catch (\Throwable $e) {
            return $value;
        }
        return (is_string($clear) && $clear !== '' && ctype_print($clear)) ? $clear : $value;
    }

    public function url()
    {
        return $this->url;
    }

    /** The secret, to be masked in logs; never to be shown. */
    public function secret()
    {
        return $this->secret;
    }

    /** What is missing before a call can be made, or '' when nothing is. */
    public function configurationProblem()
    {
        $missing = [];
        if ($this->url === '') {
            $missing[] = 'the Bridge URL';
        } elseif (!preg_match('#^https?://[^/\s]+#i', $this->url)) {
            return 'The Bridge URL must start with https:// (or http://), not "' . $this->url . '": fix it in '
                . 'Setup > Addon Modules > PUQ Proxmox KVM.';
        } elseif (stripos($this->url, 'http://') === 0 && !self::isLoopback((string) parse_url($this->url, PHP_URL_HOST))) {
            // Every call carries the Proxmox token secret and the service password: the signature keeps
            // them from being changed, not from being read.
            return 'The Bridge URL must use https:// (http:// only for a product on this machine, 127.0.0.1): '
                . 'every call carries the Proxmox token secret and the client\'s password. Fix it in Setup > '
                . 'Addon Modules > PUQ Proxmox KVM.';
        }
        if ($this->secret === '') {
            $missing[] = 'the Bridge Secret';
        }
        if (!$missing) {
            return '';
        }
        return 'PUQ Proxmox KVM is not configured: set ' . implode(' and ', $missing) . ' in Setup > Addon '
            . 'Modules > PUQ Proxmox KVM (or PKVM_BRIDGE_URL / PKVM_BRIDGE_SECRET).';
    }

    /** Whether a host name or address is this machine (127.0.0.0/8, ::1, localhost). */
    private static function isLoopback($host)
    {
        $host = strtolower(trim($host, '[]'));
        return $host === 'localhost' || $host === '::1' || preg_match('/^127(\.\d{1,3}){3}$/', $host) === 1;
    }

    /** The address a module function is posted to. */
    public function endpoint($function)
    {
        return $this->url . self::PATH_PREFIX . rawurlencode($function);
    }

    /** $params as the bridge reads them: scalars and arrays kept, objects (WHMCS's `model`) dropped. */
    public static function clean(array $params, $top = true)
    {
        $clean = [];
        foreach ($params as $key => $value) {
            if ($top && in_array($key, self::MAP_KEYS, true)) {
                // Maps of scalars: nested arrays (clientsdetails['customfields'], email preferences, ...)
                // repeat scalar keys WHMCS also sends, and the bridge accepts only scalars here.
                $map = [];
                foreach (is_array($value) ? $value : [] as $name => $item) {
                    if ($item === null || is_scalar($item)) {
                        $map[(string) $name] = self::scalar($item);
                    }
                }
                $clean[$key] = (object) $map;
                continue;
            }
            if (is_array($value)) {
                $clean[$key] = self::clean($value, false);
            } elseif ($value === null || is_scalar($value)) {
                $clean[$key] = self::scalar($value);
            }
        }
        // A list stays a list even when an object was dropped from it.
        return (!$top && $params && array_keys($params) === range(0, count($params) - 1))
            ? array_values($clean) : $clean;
    }

    private static function scalar($value)
    {
        if (is_float($value) && !is_finite($value)) {
            return null;
        }
        return $value;
    }

    /** The exact JSON body for $params: always a JSON object, maps as objects even when empty. */
    public static function encode(array $params)
    {
        // A name with a stray byte may be shown with a replacement character; a secret may not be changed
        // (the VM would get another password than WHMCS holds): refused instead.
        foreach (['password' => 'service password', 'serverpassword' => 'server password (API token secret)']
                 as $key => $what) {
            if (isset($params[$key]) && is_string($params[$key]) && !preg_match('//u', $params[$key])) {
                throw new \RuntimeException('the ' . $what . ' is not valid UTF-8 text; set it again in WHMCS');
            }
        }
        $clean = self::clean($params);
        $flags = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION
            | JSON_INVALID_UTF8_SUBSTITUTE;
        $json = json_encode($clean ? $clean : new \stdClass(), $flags);
        if ($json === false) {
            throw new \RuntimeException('the module parameters cannot be encoded as JSON: ' . json_last_error_msg());
        }
        return $json;
    }

    /** hex(HMAC-SHA256(secret, timestamp \n nonce \n METHOD \n path \n body)) */
    public static function sign($secret, $timestamp, $nonce, $method, $path, $body)
    {
        $canonical = $timestamp . "\n" . $nonce . "\n" . strtoupper($method) . "\n" . $path . "\n" . $body;
        return hash_hmac('sha256', $canonical, $secret);
    }

    /** The three signature headers for one call. */
    public function signatureHeaders($path, $body, $now = null)
    {
        $timestamp = (string) ($now === null ? time() : (int) $now);
        $nonce = bin2hex(random_bytes(16));
        return [
            'X-Bridge-Timestamp' => $timestamp,
            'X-Bridge-Nonce' => $nonce,
            'X-Bridge-Signature' => self::sign($this->secret, $timestamp, $nonce, 'POST', $path, $body),
        ];
    }

    /**
     * POST one module call. Returns ['url', 'request' (the JSON sent), 'status' (0 when nothing came
     * back), 'raw' (the answer's body), 'body' (the decoded JSON object or null), 'error' (curl's reason
     * when the bridge could not be reached), 'timed_out' (seconds waited when no answer came in time, else
     * 0)].
     */
    public function call($function, array $params)
    {
        $path = self::PATH_PREFIX . rawurlencode($function);
        $url = $this->url . $path;
        $body = self::encode($params);
        $result = ['url' => $url, 'request' => $body, 'status' => 0, 'raw' => '', 'body' => null, 'error' => '',
            'timed_out' => 0];
        if (!function_exists('curl_init')) {
            $result['error'] = 'the PHP curl extension is not installed';
            return $result;
        }
        $headers = ['Content-Type: application/json', 'Accept: application/json', 'Expect:'];
        foreach ($this->signatureHeaders($path, $body) as $name => $value) {
            $headers[] = $name . ': ' . $value;
        }
        $curl = curl_init($url);
        $options = [
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => $body,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_SSL_VERIFYPEER => true,
            CURLOPT_SSL_VERIFYHOST => 2,
            CURLOPT_CONNECTTIMEOUT => $this->connectTimeout,
            CURLOPT_TIMEOUT => $this->timeout,
            CURLOPT_USERAGENT => 'puqProxmoxKVM-whmcs-shim/1.0',
        ];
        if (defined('CURLOPT_PROTOCOLS') && defined('CURLPROTO_HTTP') && defined('CURLPROTO_HTTPS')) {
            $options[CURLOPT_PROTOCOLS] = CURLPROTO_HTTP | CURLPROTO_HTTPS;
        }
        curl_setopt_array($curl, $options);
        $raw = curl_exec($curl);
        if ($raw === false) {
            $result['error'] = curl_error($curl) . ' (curl error ' . curl_errno($curl) . ')';
            if (curl_errno($curl) === 28 && (float) curl_getinfo($curl, CURLINFO_CONNECT_TIME) > 0) {
                $result['timed_out'] = $this->timeout; // connected and sent, then no answer in time
            }
        } else {
            $result['status'] = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
            $result['raw'] = (string) $raw;
            $decoded = json_decode($result['raw'], true);
            $result['body'] = is_array($decoded) ? $decoded : null;
        }
        if (PHP_VERSION_ID < 80000) {
            curl_close($curl); // a CurlHandle object is freed on its own since PHP 8.0
        }
        return $result;
    }
}
