<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\Client;
use Cached\SimpleCache;
use Cached\Tests\Support\DaemonTestCase;
use Psr\SimpleCache\CacheException;
use Psr\SimpleCache\CacheInterface;
use Psr\SimpleCache\InvalidArgumentException;

/**
 * Cached\SimpleCache, the PSR-16 adapter, against the real daemon (embedded store).
 */
final class SimpleCacheTest extends DaemonTestCase
{
    private function cache(?Client $client = null, mixed ...$options): SimpleCache
    {
        return new SimpleCache($client ?? $this->client(), 'Session', ...$options);
    }

    public function testImplementsTheInstalledPsr16(): void
    {
        $cache = $this->cache();
        $this->assertInstanceOf(CacheInterface::class, $cache);
        $file = (new \ReflectionClass(CacheInterface::class))->getFileName();
        $this->assertIsString($file);
        $get = new \ReflectionMethod(CacheInterface::class, 'get');
        // Debian 12's php-psr-simple-cache is 1.0: no declared types; the class declares mixed/return types.
        $this->addToAssertionCount(1);
        $this->assertSame('mixed', (string) (new \ReflectionMethod(SimpleCache::class, 'get'))->getReturnType());
        if (!$get->hasReturnType()) {
            $this->assertStringStartsWith('/usr/share/php/Psr/SimpleCache', $file);
        }
    }

    public function testGetSetHasDeleteWithDefaults(): void
    {
        $cache = $this->cache();
        $key = self::unique('k');
        $this->assertNull($cache->get($key));
        $this->assertSame('fallback', $cache->get($key, 'fallback'));
        $this->assertFalse($cache->has($key));
        $values = [
            'string', '', 0, 42, -1.5, true, false, null, ['a' => [1, 2, ['deep' => "\xff\x00bin"]]], "\xff\xfe raw bytes",
        ];
        foreach ($values as $i => $value) {
            $this->assertTrue($cache->set("$key.$i", $value));
            $this->assertTrue($cache->has("$key.$i"), "has() for #$i");
            $this->assertSame($value, $cache->get("$key.$i", 'default'), "value #$i round-trips (false and null included)");
        }
        $this->assertTrue($cache->delete("$key.0"));
        $this->assertFalse($cache->has("$key.0"));
        $this->assertTrue($cache->delete("$key.0"), 'deleting what is not there succeeds too');
        $this->assertSame('x', $cache->get("$key.0", 'x'));
        $this->assertTrue($cache->set(12345, 'int key'), 'an int key is its decimal string');
        $this->assertSame('int key', $cache->get('12345'));
    }

    public function testObjectsNeedAllowedClasses(): void
    {
        $key = self::unique('o');
        $this->assertTrue($this->cache()->set($key, new \ArrayObject([1, 2])));
        $this->assertInstanceOf(\__PHP_Incomplete_Class::class, $this->cache()->get($key), 'allowed_classes false by default');
        $restored = $this->cache(null, allowedClasses: [\ArrayObject::class])->get($key);
        $this->assertInstanceOf(\ArrayObject::class, $restored);
        $this->assertSame([1, 2], $restored->getArrayCopy());
    }

    public function testBytesThatAreNotSerializedReadAsAMiss(): void
    {
        $client = $this->client();
        $key = self::unique('raw');
        $client->set('Session', $key, 'written by something else');
        $this->assertSame('d', $this->cache($client)->get($key, 'd'));
        $this->assertFalse($this->cache($client)->has($key));
    }

    public function testTtls(): void
    {
        $cache = $this->cache();
        $key = self::unique('ttl');
        $this->assertTrue($cache->set("$key.int", 'a', 1));
        $this->assertTrue($cache->set("$key.interval", 'b', new \DateInterval('PT1S')));
        $this->assertTrue($cache->set("$key.long", 'c', new \DateInterval('PT1H')));
        $this->assertTrue($cache->set("$key.none", 'd'));
        $this->assertSame('a', $cache->get("$key.int"));
        $this->assertTrue($cache->set("$key.zero", 'e'));
        $this->assertTrue($cache->set("$key.zero", 'e', 0), 'a TTL of 0 deletes');
        $this->assertFalse($cache->has("$key.zero"));
        $this->assertTrue($cache->set("$key.none", 'd2', -5), 'so does a negative one');
        $this->assertFalse($cache->has("$key.none"));
        $this->assertTrue($cache->set("$key.none", 'd'));
        usleep(1_200_000);
        $this->assertFalse($cache->has("$key.int"));
        $this->assertFalse($cache->has("$key.interval"));
        $this->assertSame('c', $cache->get("$key.long"));
        $this->assertSame('d', $cache->get("$key.none"));

        $withDefault = $this->cache(null, defaultTtl: 1);
        $withDefault->set("$key.default", 'f');
        $this->assertTrue($withDefault->has("$key.default"));
    }

    /**
     * @return iterable<string, array{0: mixed}>
     */
    public static function invalidKeys(): iterable
    {
        foreach (str_split('{}()/\\@:') as $char) {
            yield "reserved $char" => ["a{$char}b"];
        }
        yield 'empty' => [''];
        yield 'too long' => [str_repeat('x', 257)];
        yield 'control character' => ["a\nb"];
        yield 'not UTF-8' => ["\xff"];
        yield 'null' => [null];
        yield 'float' => [1.5];
        yield 'bool' => [true];
        yield 'array' => [['a']];
        yield 'object' => [new \stdClass()];
    }

    /**
     * @dataProvider invalidKeys
     */
    public function testInvalidKeysThrow(mixed $key): void
    {
        $cache = $this->cache();
        foreach ([
            'get' => static fn () => $cache->get($key),
            'set' => static fn () => $cache->set($key, 1),
            'has' => static fn () => $cache->has($key),
            'delete' => static fn () => $cache->delete($key),
            'getMultiple' => static fn () => $cache->getMultiple(['ok', $key]),
            'setMultiple' => is_int($key) || is_string($key) ? static fn () => $cache->setMultiple([$key => 1]) : static fn () => throw new \Cached\InvalidArgumentException('(not an array key)'),
            'deleteMultiple' => static fn () => $cache->deleteMultiple([$key]),
        ] as $method => $call) {
            try {
                $call();
                $this->fail("$method accepted the key " . var_export($key, true));
            } catch (InvalidArgumentException $e) {
                $this->assertInstanceOf(\InvalidArgumentException::class, $e);
            }
        }
        $this->assertTrue($cache->set('valid-after.invalid', 1), 'the cache keeps working');
    }

    public function testInvalidTtlThrows(): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->cache()->set('k', 1, 1.5);
    }

    public function testMultipleOperationsAreOneBatchLineEach(): void
    {
        [$socket, $log] = $this->fakeDaemon('proxy', $this->harness()->socket);
        $client = new Client($socket, 5.0, persistent: false);
        $cache = $this->cache($client);
        $key = self::unique('m');
        $this->assertTrue($cache->setMultiple(["$key.a" => 1, "$key.b" => [2], "$key.c" => "\xff"]));
        $generator = (static function () use ($key) {
            yield "$key.c";
            yield "$key.missing";
            yield "$key.a";
            yield "$key.b";
        })();
        $this->assertSame(["$key.c" => "\xff", "$key.missing" => 'none', "$key.a" => 1, "$key.b" => [2]],
            $cache->getMultiple($generator, 'none'), 'in the order asked, with the default for misses');
        $this->assertTrue($cache->deleteMultiple(["$key.a", "$key.b"]));
        $this->assertSame(["$key.a" => null, "$key.b" => null, "$key.c" => "\xff"], $cache->getMultiple(["$key.a", "$key.b", "$key.c"]));
        $this->assertTrue($cache->setMultiple(["$key.c" => 'gone'], 0), 'a TTL of 0 deletes');
        $this->assertSame([], $cache->getMultiple([]));

        $lines = array_values(array_filter(self::events($log), static fn (array $e): bool => isset($e['line'])));
        $this->assertCount(5, $lines, 'setMultiple, getMultiple, deleteMultiple, getMultiple, setMultiple: one line each');
        foreach ($lines as $line) {
            $this->assertStringStartsWith('[', $line['line'], 'a batch');
        }
        $client->close();
    }

    public function testClearIsHonest(): void
    {
        $cache = $this->cache();
        $key = self::unique('c');
        $cache->set($key, 'stays');
        $this->assertFalse($cache->clear(), 'cached cannot delete every entry of a key: clear() fails');
        $this->assertSame('stays', $cache->get($key));

        $hashed = $this->cache(null, hashKey: 'Class', hashId: $key);
        $hashed->setMultiple(['a' => 1, 'b' => 2]);
        $this->assertSame(1, $hashed->get('a'));
        $this->assertTrue($hashed->clear(), 'over a hash, clear() is one deleteHash');
        $this->assertSame(['a' => null, 'b' => null], $hashed->getMultiple(['a', 'b']));
        $this->assertSame('stays', $cache->get($key));
    }

    public function testDaemonFailures(): void
    {
        $cache = $this->cache(new Client('/nonexistent/cached.sock', 1.0));
        $this->assertFalse($cache->set('k', 1));
        $this->assertFalse($cache->delete('k'));
        $this->assertFalse($cache->setMultiple(['k' => 1]));
        $this->assertFalse($cache->deleteMultiple(['k']));
        try {
            $cache->get('k');
            $this->fail('a read cannot tell a miss from a failure: it throws');
        } catch (CacheException $e) {
            $this->assertInstanceOf(\Cached\ConnectionException::class, $e->getPrevious());
        }
        $this->expectException(CacheException::class);
        $cache->getMultiple(['k']);
    }
}
