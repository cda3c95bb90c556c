<?php

declare(strict_types=1);

namespace Cached;

use Psr\SimpleCache\CacheInterface;

/**
 * A PSR-16 cache (Psr\SimpleCache\CacheInterface) over one cached key, whose string identities are the
 * PSR-16 keys: `new SimpleCache($client, 'Session')` stores `$cache->set('abc', $v)` as the entry
 * Session/"abc" (Redis key `0000SESSION#abc`).
 *
 * Written against psr/simple-cache 1.0 (Debian's php-psr-simple-cache): untyped parameters (declared
 * `mixed`) and declared return types, which is also compatible with the 2.0 and 3.0 interfaces.
 *
 * - Values: any serializable PHP value, stored as serialize() bytes (binary-safe); read back with
 *   unserialize() and `allowed_classes` false by default (objects come back as __PHP_Incomplete_Class:
 *   no object injection from what is in Redis). Pass a list of class names, or true, to allow classes.
 *   A stored value that does not unserialize (written by something else) reads as a miss.
 * - Keys: strings (ints are taken as their decimal string: PHP turns numeric array keys into ints), 1 to
 *   256 bytes, without PSR-16's reserved characters `{}()/\@:` and without control characters; anything
 *   else is an {@see InvalidArgumentException} (which implements Psr\SimpleCache\InvalidArgumentException).
 * - TTL: null = the constructor's default TTL, or when that is null too, the cached key's configured ttl;
 *   an int of seconds or a DateInterval; zero or negative deletes the item (PSR-16). Expiry is the daemon's
 *   (Redis's PX), to the millisecond.
 * - getMultiple, setMultiple, deleteMultiple: one JSON-RPC batch line each (split every 1000 items).
 * - get/has/getMultiple read without a lease (`"lease": false`): they never wait behind another
 *   client's fill. Use a key without a sync handler (a key with one is filled by the daemon on a miss).
 * - clear(): cached has no method to delete every entry of one key (entries are not hashes), so clear()
 *   deletes nothing and returns false ("failure", as PSR-16 allows). For a clearable cache, use a hash
 *   ($hashKey, $hashId): then clear() is one deleteHash and returns true. Hash entries cannot expire
 *   (Redis hash fields have no TTL): with a hash, TTLs other than null are ignored, except <= 0 (delete).
 * - Failures: a daemon or socket error makes get/getMultiple/has throw a {@see SimpleCacheException}
 *   (implements Psr\SimpleCache\CacheException, the CachedException as its previous); set, delete,
 *   setMultiple, deleteMultiple return false instead.
 */
final class SimpleCache implements CacheInterface
{
    private const RESERVED = '{}()/\\@:';

    /**
     * @param Client $client the daemon's client
     * @param string $key the cached key the items live under (3 to 128 of [A-Za-z0-9_-.:/@+])
     * @param int|null $defaultTtl seconds for set() without a TTL; null: the cached key's configured ttl
     * @param bool|list<class-string> $allowedClasses unserialize()'s allowed_classes (default false: no objects)
     * @param string|null $hashKey with $hashId: keep the items in that hash (clear() can then delete them)
     */
    public function __construct(
        private readonly Client $client,
        public readonly string $key,
        private readonly ?int $defaultTtl = null,
        private readonly bool|array $allowedClasses = false,
        private readonly ?string $hashKey = null,
        private readonly int|string|BigInteger|null $hashId = null,
    ) {
        if (($hashKey === null) !== ($hashId === null)) {
            throw new \InvalidArgumentException('hashKey and hashId go together');
        }
    }

    /**
     * @param string $key
     * @param mixed $default
     * @throws InvalidArgumentException for an invalid key
     * @throws SimpleCacheException when the daemon cannot be asked
     */
    public function get(mixed $key, mixed $default = null): mixed
    {
        $identity = self::identity($key);
        try {
            $result = $this->client->getResult($this->key, $identity, $this->hashKey, $this->hashId);
        } catch (CachedException $e) {
            throw SimpleCacheException::from($e);
        }
        [$found, $value] = $this->decode($result);
        return $found ? $value : $default;
    }

    /**
     * @param string $key
     * @param mixed $value anything serialize() takes
     * @param null|int|\DateInterval $ttl
     * @throws InvalidArgumentException for an invalid key or TTL
     */
    public function set(mixed $key, mixed $value, mixed $ttl = null): bool
    {
        $identity = self::identity($key);
        $seconds = $this->seconds($ttl);
        if ($seconds !== null && $seconds <= 0) {
            return $this->delete($key);
        }
        try {
            return $this->client->set($this->key, $identity, serialize($value), $this->hashKey === null ? $seconds : null,
                $this->hashKey, $this->hashId);
        } catch (CachedException) {
            return false;
        }
    }

    /**
     * @param string $key
     * @throws InvalidArgumentException for an invalid key
     */
    public function delete(mixed $key): bool
    {
        $identity = self::identity($key);
        try {
            $this->client->delete($this->key, $identity, $this->hashKey, $this->hashId);
            return true; // deleted, or there was nothing to delete: the item is not there either way
        } catch (CachedException) {
            return false;
        }
    }

    /**
     * Without a hash: deletes nothing, returns false (cached cannot delete every entry of a key).
     * With a hash: deletes it (one deleteHash), true.
     */
    public function clear(): bool
    {
        if ($this->hashKey === null || $this->hashId === null) {
            return false;
        }
        try {
            $this->client->deleteHash($this->hashKey, $this->hashId);
            return true;
        } catch (CachedException) {
            return false;
        }
    }

    /**
     * One batch line for all the keys.
     *
     * @param iterable<string> $keys
     * @param mixed $default
     * @return array<string, mixed> by key, in the order given
     * @throws InvalidArgumentException for an invalid key (or $keys not iterable)
     * @throws SimpleCacheException
     */
    public function getMultiple(mixed $keys, mixed $default = null): iterable
    {
        $identities = [];
        foreach (self::keysOf($keys) as $key) {
            $identity = self::identity($key);
            $identities[$identity] = $identity;
        }
        if ($identities === []) {
            return [];
        }
        try {
            $results = $this->client->getMany($this->key, array_values($identities), $this->hashKey, $this->hashId);
        } catch (CachedException $e) {
            throw SimpleCacheException::from($e);
        }
        $out = [];
        $i = 0;
        foreach (array_keys($identities) as $key) {
            [$found, $value] = $this->decode($results[$i++]);
            $out[$key] = $found ? $value : $default;
        }
        return $out;
    }

    /**
     * One batch line for all the items (a TTL <= 0 deletes them).
     *
     * @param iterable<string, mixed> $values
     * @param null|int|\DateInterval $ttl
     * @throws InvalidArgumentException for an invalid key or TTL
     */
    public function setMultiple(mixed $values, mixed $ttl = null): bool
    {
        if (!is_iterable($values)) {
            throw new InvalidArgumentException('setMultiple() takes an iterable of key => value');
        }
        $seconds = $this->seconds($ttl);
        $requests = [];
        foreach ($values as $key => $value) {
            $params = $this->address(self::identity($key));
            if ($seconds !== null && $seconds <= 0) {
                $requests[] = ['delete', $params];
                continue;
            }
            $bytes = serialize($value);
            if (preg_match('//u', $bytes) === 1) {
                $params['value'] = $bytes;
            } else {
                $params['value'] = base64_encode($bytes);
                $params['encoding'] = 'base64';
            }
            if ($seconds !== null && $this->hashKey === null) {
                $params['ttl'] = $seconds;
            }
            $requests[] = ['set', $params];
        }
        return $this->batchSucceeded($requests, 'stored');
    }

    /**
     * One batch line for all the keys.
     *
     * @param iterable<string> $keys
     * @throws InvalidArgumentException for an invalid key
     */
    public function deleteMultiple(mixed $keys): bool
    {
        $requests = [];
        foreach (self::keysOf($keys) as $key) {
            $requests[] = ['delete', $this->address(self::identity($key))];
        }
        return $this->batchSucceeded($requests, null);
    }

    /**
     * @param string $key
     * @throws InvalidArgumentException for an invalid key
     * @throws SimpleCacheException
     */
    public function has(mixed $key): bool
    {
        $identity = self::identity($key);
        try {
            $result = $this->client->getResult($this->key, $identity, $this->hashKey, $this->hashId);
        } catch (CachedException $e) {
            throw SimpleCacheException::from($e);
        }
        return $this->decode($result)[0];
    }

    // -----------------------------------------------------------------------------------------------

    /**
     * A hit's value unserialized: [true, value]; [false, null] for a miss, or for bytes that are not
     * something serialize() made.
     *
     * @return array{0: bool, 1: mixed}
     */
    private function decode(Result $result): array
    {
        if ($result->value === null) {
            return [false, null];
        }
        if ($result->value === serialize(false)) {
            return [true, false];
        }
        set_error_handler(static fn (): bool => true);
        try {
            $value = unserialize($result->value, ['allowed_classes' => $this->allowedClasses]);
        } catch (\Throwable) {
            $value = false;
        } finally {
            restore_error_handler();
        }
        return $value === false ? [false, null] : [true, $value];
    }

    /**
     * @param list<array{0: string, 1: array<string, mixed>}> $requests
     */
    private function batchSucceeded(array $requests, ?string $member): bool
    {
        if ($requests === []) {
            return true;
        }
        try {
            $results = $this->client->batch($requests);
        } catch (CachedException) {
            return false;
        }
        foreach ($results as $i => $result) {
            if ($result instanceof CachedException) {
                return false;
            }
            if ($requests[$i][0] === 'set' && $member !== null && !(is_array($result) && ($result[$member] ?? false) === true)) {
                return false;
            }
        }
        return true;
    }

    /**
     * @return array<string, mixed>
     */
    private function address(string $identity): array
    {
        $params = ['key' => $this->key, 'identity' => $identity];
        if ($this->hashKey !== null) {
            $params['hashKey'] = $this->hashKey;
            $params['hashId'] = $this->hashId;
        }
        return $params;
    }

    /**
     * @return iterable<mixed>
     */
    private static function keysOf(mixed $keys): iterable
    {
        if (!is_iterable($keys)) {
            throw new InvalidArgumentException('the keys must be an array or a Traversable');
        }
        return $keys;
    }

    /**
     * A PSR-16 key as the entry's string identity.
     */
    private static function identity(mixed $key): string
    {
        if (is_int($key)) {
            $key = (string) $key;
        }
        if (!is_string($key)) {
            throw new InvalidArgumentException(sprintf('a cache key must be a string, not %s', get_debug_type($key)));
        }
        if ($key === '' || strlen($key) > 256) {
            throw new InvalidArgumentException(sprintf('a cache key must be 1 to 256 bytes long, not %d', strlen($key)));
        }
        if (strpbrk($key, self::RESERVED) !== false) {
            throw new InvalidArgumentException(sprintf('the cache key "%s" holds a reserved character (one of %s)', $key, self::RESERVED));
        }
        if (preg_match('/[\x00-\x1f\x7f]/', $key) === 1 || preg_match('//u', $key) !== 1) {
            throw new InvalidArgumentException('a cache key must be UTF-8 without control characters');
        }
        return $key;
    }

    /**
     * A PSR-16 TTL as seconds (null: the default).
     */
    private function seconds(mixed $ttl): int|float|null
    {
        if ($ttl === null) {
            return $this->defaultTtl;
        }
        if (is_int($ttl)) {
            return $ttl;
        }
        if ($ttl instanceof \DateInterval) {
            $now = new \DateTimeImmutable();
            $then = $now->add($ttl);
            return (float) $then->format('U.u') - (float) $now->format('U.u');
        }
        throw new InvalidArgumentException(sprintf('a TTL must be null, an int or a DateInterval, not %s', get_debug_type($ttl)));
    }
}
