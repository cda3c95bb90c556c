<?php

declare(strict_types=1);

namespace Cached;

/**
 * A client of the cached daemon (docs/protocol.md): get, set, delete, deleteHash, the read-through
 * fetch with the lease flow, batches, and call() for any other method.
 *
 * Identities are an int, a string (used verbatim: "12" and 12 are different entries) or a
 * {@see BigInteger}. Values are strings of bytes: valid UTF-8 travels as a JSON string, anything else
 * base64-encoded (`"encoding": "base64"`); what you get back is byte for byte what was stored.
 *
 * The connection is persistent by default (kept by PHP across the requests of one FPM worker, shared
 * by every Client of the same socket path in the process), one request in flight at a time, and
 * discarded whenever a request fails mid-way (see {@see Connection}). Every request sends its
 * `timeout` (the call's, else the client's), and the client waits {@see Connection::ANSWER_GRACE}
 * longer for the answer, so that the daemon's -32009 arrives rather than a socket timeout.
 *
 * Errors: {@see CachedException} (getCode(): the JSON-RPC code) and its subclasses;
 * {@see ConnectionException} for socket failures.
 */
final class Client
{
    public const DEFAULT_SOCKET = '/run/cached/cached.sock';
    /** Most requests the daemon takes in one batch (its default `limits.max_batch`); longer batches are split. */
    public const MAX_BATCH = 1000;

    /** The daemon's socket path. */
    public readonly string $socketPath;
    private readonly Connection $connection;

    /**
     * @param string|null $socketPath the daemon's Unix socket; null: $CACHED_SOCKET if set and not empty, else /run/cached/cached.sock
     * @param float $timeout the default timeout of a request, in seconds (0 < timeout <= 86400), sent to the daemon
     * @param bool $persistent keep the socket open across PHP requests (STREAM_CLIENT_PERSISTENT), shared by
     *                         every persistent Client of the path in the process; false: a socket of this object's own
     * @throws \InvalidArgumentException for a timeout out of range
     */
    public function __construct(?string $socketPath = null, public readonly float $timeout = 30.0, bool $persistent = true)
    {
        if ($socketPath === null || $socketPath === '') {
            $env = getenv('CACHED_SOCKET');
            $socketPath = is_string($env) && $env !== '' ? $env : self::DEFAULT_SOCKET;
        }
        self::checkTimeout($timeout);
        $this->socketPath = $socketPath;
        $this->connection = new Connection($socketPath, $persistent);
    }

    /**
     * Reads an entry without ever filling it: sends `"lease": false`, so a miss is answered at once
     * (on a key with a sync handler, the daemon fills it and the value is returned).
     *
     * @param string $key the key name, such as "Student"
     * @param int|string|BigInteger $identity the entry's identity
     * @param string|null $hashKey with $hashId: the entry lives in that hash
     * @param float|null $timeout seconds; null: the client's
     * @return string|null the value's bytes, or null when there is none
     * @throws CachedException
     */
    public function get(string $key, int|string|BigInteger $identity, ?string $hashKey = null,
                        int|string|BigInteger|null $hashId = null, ?float $timeout = null): ?string
    {
        return $this->getResult($key, $identity, $hashKey, $hashId, $timeout)->value;
    }

    /**
     * Like {@see get()}, with the whole answer: hit, value, stale (and a lease when $lease is true:
     * then the caller must store the value with set(..., lease: $result->lease) or give it back with
     * release(); {@see fetch()} does all that).
     *
     * @param list<mixed>|null $args passed to the key's sync handler, if it has one
     * @param array<string, mixed>|null $kwargs passed to the key's sync handler, if it has one
     * @throws CachedException
     */
    public function getResult(string $key, int|string|BigInteger $identity, ?string $hashKey = null,
                              int|string|BigInteger|null $hashId = null, ?float $timeout = null, bool $lease = false,
                              ?array $args = null, ?array $kwargs = null): Result
    {
        $params = self::address($key, $identity, $hashKey, $hashId);
        if ($args !== null) {
            $params['args'] = $args;
        }
        if ($kwargs !== null) {
            $params['kwargs'] = $kwargs;
        }
        $params['lease'] = $lease;
        return self::resultOf($this->send('get', $params, $timeout));
    }

    /**
     * Stores a value.
     *
     * @param string $value the bytes to store (any bytes)
     * @param float|null $ttl seconds (fractions allowed); 0: no expiry; null: the key's configured ttl.
     *                        Hash entries cannot expire.
     * @param string|null $lease the token of a get miss (stores only if the lease is still valid)
     * @return bool true when stored; false when a lease was no longer valid, or the entry was written meanwhile
     * @throws CachedException
     */
    public function set(string $key, int|string|BigInteger $identity, string $value, ?float $ttl = null,
                        ?string $hashKey = null, int|string|BigInteger|null $hashId = null, ?string $lease = null,
                        ?float $timeout = null): bool
    {
        $params = self::address($key, $identity, $hashKey, $hashId) + self::encodeValue($value);
        if ($ttl !== null) {
            $params['ttl'] = $ttl;
        }
        if ($lease !== null) {
            $params['lease'] = $lease;
        }
        $result = $this->send('set', $params, $timeout);
        return is_array($result) && ($result['stored'] ?? false) === true;
    }

    /**
     * Deletes an entry (and revokes a lease in flight for it).
     *
     * @return bool whether there was an entry
     * @throws CachedException
     */
    public function delete(string $key, int|string|BigInteger $identity, ?string $hashKey = null,
                           int|string|BigInteger|null $hashId = null, ?float $timeout = null): bool
    {
        $result = $this->send('delete', self::address($key, $identity, $hashKey, $hashId), $timeout);
        return is_array($result) && ($result['deleted'] ?? 0) === 1;
    }

    /**
     * Deletes a whole hash.
     *
     * @return bool whether there was such a hash
     * @throws CachedException
     */
    public function deleteHash(string $hashKey, int|string|BigInteger $hashId, ?float $timeout = null): bool
    {
        $result = $this->send('deleteHash', ['hashKey' => $hashKey, 'hashId' => $hashId], $timeout);
        return is_array($result) && ($result['deleted'] ?? 0) === 1;
    }

    /**
     * Gives back the lease of a get miss whose fill failed: the next waiter gets a new lease at once.
     *
     * @return bool false when the token was no longer the entry's live lease
     * @throws CachedException
     */
    public function release(string $key, int|string|BigInteger $identity, string $lease, ?string $hashKey = null,
                            int|string|BigInteger|null $hashId = null, ?float $timeout = null): bool
    {
        $params = self::address($key, $identity, $hashKey, $hashId);
        $params['lease'] = $lease;
        $result = $this->send('release', $params, $timeout);
        return is_array($result) && ($result['released'] ?? false) === true;
    }

    /**
     * Read-through with the lease flow: one fill per missing entry across every client of the daemon.
     *
     * - A hit, or a miss the daemon filled (a key with a sync handler; or this call waited behind another
     *   client's fill): returns that value, $fill is not called.
     * - A miss with a lease (this caller asked first): calls $fill(), stores its value with the lease and
     *   returns it. If the daemon refuses the lease's set (the entry was written or deleted meanwhile), the
     *   value is still returned, just not stored; a failure to store it (Redis down) is not thrown either.
     * - $fill returns null (no such entry): the lease is given back, null is returned, nothing is stored.
     * - $fill throws: the lease is given back (release) and the very same exception is rethrown; a failure
     *   of the release never hides it.
     * - A miss without a lease (the daemon answered it as a plain miss): returns null, $fill is not called.
     *
     * @param callable(): (string|null) $fill computes the value's bytes on a miss
     * @param float|null $ttl the stored value's TTL (null: the key's configured one)
     * @param float|null $timeout of the get (a wait behind another client's lease counts), and of the set/release
     * @return string|null
     * @throws CachedException errors of the get (e.g. -32009 when the wait outlasts the timeout)
     */
    public function fetch(string $key, int|string|BigInteger $identity, callable $fill, ?float $ttl = null,
                          ?string $hashKey = null, int|string|BigInteger|null $hashId = null, ?float $timeout = null): ?string
    {
        $result = $this->getResult($key, $identity, $hashKey, $hashId, $timeout, true);
        if ($result->hit || $result->value !== null || $result->lease === null) {
            return $result->value;
        }
        $lease = $result->lease;
        $this->connection->holdLease();
        try {
            try {
                $value = $fill();
            } catch (\Throwable $error) {
                $this->releaseQuietly($key, $identity, $lease, $hashKey, $hashId, $timeout);
                throw $error;
            }
            if ($value === null) {
                $this->releaseQuietly($key, $identity, $lease, $hashKey, $hashId, $timeout);
                return null;
            }
            if (!is_string($value)) {
                $this->releaseQuietly($key, $identity, $lease, $hashKey, $hashId, $timeout);
                throw new \TypeError(sprintf('the fill of %s must return a string or null, not %s', $key, get_debug_type($value)));
            }
            try {
                $this->set($key, $identity, $value, $ttl, $hashKey, $hashId, $lease, $timeout);
            } catch (InvalidParamsException $e) {
                $this->releaseQuietly($key, $identity, $lease, $hashKey, $hashId, $timeout);
                throw $e;
            } catch (ConnectionException) {
                // The connection is gone: the daemon hands the lease to the next waiter by itself.
            } catch (CachedException) {
                // Not stored (store down, timeout): the value is still the caller's.
                $this->releaseQuietly($key, $identity, $lease, $hashKey, $hashId, $timeout);
            }
            return $value;
        } finally {
            $this->connection->dropLease();
        }
    }

    /**
     * Reads many entries of one key in one JSON-RPC batch (one line; split every {@see MAX_BATCH}),
     * without leases. The answers keep the keys of $identities.
     *
     * @param iterable<array-key, int|string|BigInteger> $identities
     * @return array<array-key, Result>
     * @throws CachedException the first error among the answers
     */
    public function getMany(string $key, iterable $identities, ?string $hashKey = null,
                            int|string|BigInteger|null $hashId = null, ?float $timeout = null): array
    {
        $requests = [];
        $names = [];
        foreach ($identities as $name => $identity) {
            $params = self::address($key, $identity, $hashKey, $hashId);
            $params['lease'] = false;
            $requests[] = ['get', $params];
            $names[] = $name;
        }
        $out = [];
        foreach ($this->batch($requests, $timeout) as $i => $result) {
            if ($result instanceof CachedException) {
                throw $result;
            }
            $out[$names[$i]] = self::resultOf($result);
        }
        return $out;
    }

    /**
     * Sends requests as one JSON-RPC batch line (split every {@see MAX_BATCH} requests). Each answer is
     * the request's `result`, or its error as a CachedException object (returned, not thrown).
     *
     * @param list<array{0: string, 1: array<string, mixed>}> $requests [method, params] pairs
     * @return list<mixed>
     * @throws CachedException when the daemon refused a whole batch; ConnectionException
     */
    public function batch(array $requests, ?float $timeout = null): array
    {
        $timeout ??= $this->timeout;
        self::checkTimeout($timeout);
        $out = [];
        foreach (array_chunk($requests, self::MAX_BATCH) as $chunk) {
            $prepared = [];
            foreach ($chunk as [$method, $params]) {
                $params['timeout'] ??= self::wireTimeout($timeout);
                $prepared[] = [$method, $params];
            }
            array_push($out, ...$this->connection->batch($prepared, $timeout));
        }
        return $out;
    }

    /**
     * Any method, such as `ping`, `stats`, `metrics` (admin and low-level use). The result is decoded
     * with objects as arrays and integers beyond PHP_INT_MAX as strings. BigInteger values in $params
     * travel as JSON integers.
     *
     * @param array<string, mixed> $params by name; `timeout` is added unless given
     * @throws CachedException
     */
    public function call(string $method, array $params = [], ?float $timeout = null): mixed
    {
        if (isset($params['timeout']) && (is_int($params['timeout']) || is_float($params['timeout'])) && $timeout === null
            && $params['timeout'] > 0 && $params['timeout'] <= 86400) {
            $timeout = (float) $params['timeout'];
        }
        return $this->send($method, $params, $timeout);
    }

    /**
     * @return bool true when the daemon answers `ping`
     * @throws CachedException
     */
    public function ping(?float $timeout = null): bool
    {
        return $this->send('ping', [], $timeout) === 'pong';
    }

    /**
     * The daemon's `stats` (docs/protocol.md).
     *
     * @return array<string, mixed>
     * @throws CachedException
     */
    public function stats(?float $timeout = null): array
    {
        $stats = $this->send('stats', [], $timeout);
        return is_array($stats) ? $stats : [];
    }

    /**
     * Closes the socket. For a persistent client this closes the socket every persistent Client of the
     * path in this process shares (the next request of any of them opens a new one).
     */
    public function close(): void
    {
        $this->connection->close();
    }

    /**
     * The connection (for tests and diagnostics).
     *
     * @internal
     */
    public function connection(): Connection
    {
        return $this->connection;
    }

    // -----------------------------------------------------------------------------------------------

    /**
     * @param array<string, mixed> $params
     */
    private function send(string $method, array $params, ?float $timeout): mixed
    {
        $timeout ??= $this->timeout;
        self::checkTimeout($timeout);
        $params['timeout'] ??= self::wireTimeout($timeout);
        return $this->connection->request($method, $params, $timeout);
    }

    private function releaseQuietly(string $key, int|string|BigInteger $identity, string $lease, ?string $hashKey,
                                    int|string|BigInteger|null $hashId, ?float $timeout): void
    {
        try {
            $this->release($key, $identity, $lease, $hashKey, $hashId, $timeout);
        } catch (\Throwable) {
            // The lease passes on by itself (lease_timeout, or the connection's end); the fill's outcome matters more.
        }
    }

    /**
     * @return array<string, mixed>
     */
    private static function address(string $key, int|string|BigInteger $identity, ?string $hashKey,
                                    int|string|BigInteger|null $hashId): array
    {
        $params = ['key' => $key, 'identity' => $identity];
        if ($hashKey !== null) {
            $params['hashKey'] = $hashKey;
        }
        if ($hashId !== null) {
            $params['hashId'] = $hashId;
        }
        return $params;
    }

    /**
     * @return array{value: string, encoding?: string}
     */
    private static function encodeValue(string $value): array
    {
        if (preg_match('//u', $value) === 1) {
            return ['value' => $value];
        }
        return ['value' => base64_encode($value), 'encoding' => 'base64'];
    }

    private static function resultOf(mixed $result): Result
    {
        if (!is_array($result) || !is_bool($result['hit'] ?? null)) {
            throw new CachedException('cached answered get with something that is not a get answer', CachedException::INTERNAL_ERROR);
        }
        $value = $result['value'] ?? null;
        if ($value !== null) {
            if (!is_string($value)) {
                throw new CachedException('cached answered a value that is not a string', CachedException::INTERNAL_ERROR);
            }
            if (($result['encoding'] ?? null) === 'base64') {
                $decoded = base64_decode($value, true);
                if ($decoded === false) {
                    throw new CachedException('cached answered invalid base64', CachedException::INTERNAL_ERROR);
                }
                $value = $decoded;
            }
        }
        $lease = $result['lease'] ?? null;
        return new Result($result['hit'], $value, ($result['stale'] ?? false) === true,
            is_string($lease) ? $lease : null, ($result['cached'] ?? true) !== false);
    }

    private static function checkTimeout(float $timeout): void
    {
        if (!($timeout > 0 && $timeout <= 86400)) {
            throw new \InvalidArgumentException(sprintf('a timeout must be greater than 0 and at most 86400 seconds, not %s', $timeout));
        }
    }

    private static function wireTimeout(float $timeout): float
    {
        return max(0.001, round($timeout, 6));
    }
}
