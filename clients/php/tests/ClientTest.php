<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\BigInteger;
use Cached\CachedException;
use Cached\Client;
use Cached\ConnectionException;
use Cached\DeadlineExceededException;
use Cached\ErrorCode;
use Cached\InvalidParamsException;
use Cached\Tests\Support\DaemonTestCase;

/** A fill's own exception, to check that fetch rethrows the very object. */
final class OriginDown extends \RuntimeException
{
}

/**
 * The client against the real daemon (and, for the failures a daemon does not make on demand, against
 * tests/fake-daemon.php): the persistent connection, failures mid-request, restarts, the lease flow
 * with waiters in child processes, deadlines.
 */
final class ClientTest extends DaemonTestCase
{
    public function testRoundTripsBytesIdentitiesAndHashes(): void
    {
        $c = $this->client();
        $id = self::unique();
        $binary = "\x00\xff\xfe\x80A\n\r\"\\\xc3";
        $this->assertTrue($c->set('Student', $id, $binary));
        $this->assertSame($binary, $c->get('Student', $id));
        $this->assertTrue($c->set('Student', $id, 'ünïcødé ✓ 🚀', ttl: 60));
        $this->assertSame('ünïcødé ✓ 🚀', $c->get('Student', $id));

        $big = new BigInteger('123456789012345678901234567890');
        $this->assertTrue($c->set('Student', $big, 'big'));
        $this->assertSame('big', $c->get('Student', new BigInteger('+000123456789012345678901234567890')));
        $this->assertNull($c->get('Student', new BigInteger('123456789012345678901234567891')));
        $this->assertTrue($c->set('Student', 12, 'integer twelve'));
        $this->assertNotSame('integer twelve', $c->get('Student', '12'), 'a string identity is another entry');

        $this->assertTrue($c->set('Student', 12, 'in a hash', hashKey: 'Class', hashId: $id));
        $result = $c->getResult('Student', 12, 'Class', $id);
        $this->assertTrue($result->hit);
        $this->assertSame('in a hash', $result->value);
        $this->assertFalse($result->stale);
        $this->assertTrue($c->delete('Student', 12, 'Class', $id));
        $this->assertFalse($c->delete('Student', 12, 'Class', $id));
        $this->assertTrue($c->set('Student', 13, 'x', hashKey: 'Class', hashId: $id));
        $this->assertTrue($c->deleteHash('Class', $id));
        $this->assertFalse($c->deleteHash('Class', $id));
        $this->assertSame('pong', $c->call('ping'));
        $this->assertTrue($c->ping());
    }

    public function testPersistentConnectionIsSharedAcrossClientsOfOneProcess(): void
    {
        $socket = $this->harness()->socket;
        $first = new Client($socket);
        $first->ping();
        $stream = $first->connection()->stream();
        $this->assertIsResource($stream);
        $total = $first->stats()['connections']['total'];
        for ($i = 0; $i < 5; $i++) {
            $other = new Client($socket);
            $this->assertTrue($other->ping());
            $this->assertSame($stream, $other->connection()->stream(), 'a new Client of the same path reuses the persistent socket');
        }
        $this->assertSame($total, $first->stats()['connections']['total'], 'no new connection was opened');

        $own = new Client($socket, persistent: false);
        $own->ping();
        $this->assertNotSame($stream, $own->connection()->stream());
        $this->assertSame($total + 1, $first->stats()['connections']['total']);
        $own->close();
    }

    public function testDeadlineExceededKeepsTheConnection(): void
    {
        $c = $this->client();
        $c->ping();
        $stream = $c->connection()->stream();
        $started = hrtime(true);
        try {
            $c->get('Handled', -2, timeout: 0.3); // the handler sleeps 3.5 s
            $this->fail('expected -32009');
        } catch (DeadlineExceededException $e) {
            $elapsed = (hrtime(true) - $started) / 1e9;
            $this->assertSame(-32009, $e->getCode());
            $this->assertSame(ErrorCode::DeadlineExceeded, $e->getErrorCode());
            $this->assertEqualsWithDelta(0.3, $e->getData()['timeout'] ?? null, 0.0001);
            $this->assertLessThan(1.0, $elapsed, 'answered at the deadline, not at the socket timeout');
        }
        $this->assertSame($stream, $c->connection()->stream(), 'an error answer leaves the connection as it is');
        $this->assertTrue($c->ping());
    }

    public function testErrorsCarryTheirCode(): void
    {
        $c = $this->client();
        try {
            $c->get('ab', 1);
            $this->fail('expected -32602');
        } catch (InvalidParamsException $e) {
            $this->assertSame(CachedException::INVALID_PARAMS, $e->getCode());
        }
        try {
            $c->call('noSuchMethod');
            $this->fail('expected -32601');
        } catch (CachedException $e) {
            $this->assertSame(-32601, $e->getCode());
            $this->assertContains('get', $e->getData()['methods'] ?? []);
        }
        try {
            $c->get('Handled', -1);
            $this->fail('expected -32004');
        } catch (CachedException $e) {
            $this->assertSame(ErrorCode::HandlerError, $e->getErrorCode());
        }
        $missing = new Client('/nonexistent/cached.sock', 1.0);
        $this->expectException(ConnectionException::class);
        $missing->ping();
    }

    public function testSocketPathDefaults(): void
    {
        $old = getenv('CACHED_SOCKET');
        try {
            putenv('CACHED_SOCKET=/tmp/from-env.sock');
            $this->assertSame('/tmp/from-env.sock', (new Client())->socketPath);
            putenv('CACHED_SOCKET');
            $this->assertSame('/run/cached/cached.sock', (new Client())->socketPath);
        } finally {
            putenv($old === false ? 'CACHED_SOCKET' : "CACHED_SOCKET=$old");
        }
        $this->expectException(\InvalidArgumentException::class);
        new Client('/tmp/x.sock', 0.0);
    }

    public function testStalledDaemonTimesOutAndTheNextRequestGetsItsOwnAnswer(): void
    {
        $harness = $this->harness();
        $c = new Client($harness->socket, 10.0);
        $id = self::unique();
        $c->set('Student', $id, 'the right answer');
        $c->set('Student', $id . '-other', 'an answer to the request given up on');
        $before = $c->connection()->stream();
        $pid = $this->stopDaemon($harness);
        $started = hrtime(true);
        try {
            $c->get('Student', $id . '-other', timeout: 0.2);
            $this->fail('a stalled daemon cannot answer');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('did not answer within', $e->getMessage());
            $this->assertLessThan(2.5, (hrtime(true) - $started) / 1e9, "timeout + the answer grace (1 s)");
        } finally {
            $this->continueDaemon($pid);
        }
        $this->assertFalse(is_resource($before), 'the socket with the unread answer was closed');
        usleep(100_000); // the daemon now answers the old request, on the old socket
        $this->assertSame('the right answer', $c->get('Student', $id));
        $this->assertNotSame($before, $c->connection()->stream());
    }

    public function testHalfReadAnswerIsNeverReused(): void
    {
        [$socket, $log] = $this->fakeDaemon('half');
        $c = new Client($socket, 0.2);
        try {
            $c->get('Student', 1);
            $this->fail('half an answer is not an answer');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('did not answer', $e->getMessage());
        }
        $this->assertSame('fresh', $c->get('Student', 2), 'the next request went out on a fresh connection');
        $events = self::events($log);
        $this->assertSame([1, 2], array_values(array_unique(array_column($events, 'conn'))));
        $this->assertCount(1, array_filter($events, static fn (array $e): bool => $e['conn'] === 1 && isset($e['line'])),
            'nothing more was sent on the half-read connection');
    }

    public function testGarbageAnswerDiscardsTheConnection(): void
    {
        [$socket, $log] = $this->fakeDaemon('garbage');
        $c = new Client($socket, 2.0, persistent: false);
        try {
            $c->ping();
            $this->fail('garbage is not an answer');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('not JSON', $e->getMessage());
        }
        $this->assertTrue($c->ping());
        $this->assertSame([1, 2], array_values(array_unique(array_column(self::events($log), 'conn'))));
    }

    public function testEofAfterSendingIsNotRetried(): void
    {
        [$socket, $log] = $this->fakeDaemon('eof');
        $c = new Client($socket, 2.0);
        try {
            $c->set('Student', 1, 'maybe stored');
            $this->fail('the daemon closed before answering');
        } catch (ConnectionException $e) {
            $this->assertStringContainsString('closed the connection before answering', $e->getMessage());
        }
        $lines = array_filter(self::events($log), static fn (array $e): bool => isset($e['line']));
        $this->assertCount(1, $lines, 'a request that went out is never sent again');
        $this->assertTrue($c->ping(), 'and the next request opens a fresh connection');
    }

    public function testDaemonRestartIsReconnectedTransparently(): void
    {
        $harness = $this->harness('redis');
        $c = new Client($harness->socket, 10.0);
        $id = self::unique();
        $c->set('Student', $id, 'before');
        $before = $c->connection()->stream();
        $harness->command('restart');
        $this->assertSame('before', $c->get('Student', $id), 'Redis kept it; the client reconnected by itself');
        $this->assertNotSame($before, $c->connection()->stream());
        $stats = $c->stats();
        $this->assertSame(1, $stats['methods']['get']['requests'], 'the get went out once, on the new connection');
        $this->assertSame(1, $stats['connections']['current'], 'one connection: ours (the harness\'s pings have closed)');
    }

    public function testFetchWithConcurrentWaitersInChildProcessesFillsOnce(): void
    {
        $socket = $this->harness()->socket;
        $id = self::unique();
        $children = [];
        // The issue's stampede: 100 processes (PHP-FPM workers are processes) fetch one cold entry at once.
        for ($i = 0; $i < 100; $i++) {
            $children[] = $this->startStep($socket, ['op' => 'fetch', 'key' => 'Session', 'identity' => $id, 'client' => "c$i",
                'fill' => ['value' => ['utf8' => "from child $i"], 'delayMs' => 1000]]);
        }
        $outcomes = array_map(fn (array $pipes): array => $this->finish($pipes), $children);
        $filled = array_values(array_filter($outcomes, static fn (array $o): bool => $o['fillCalled'] === true));
        $this->assertCount(1, $filled, 'exactly one fill: ' . json_encode($outcomes));
        foreach ($outcomes as $outcome) {
            $this->assertSame($filled[0]['value'], $outcome['value'], 'every waiter got the holder\'s value');
        }
        $this->assertSame($filled[0]['value'], $this->client()->get('Session', $id));
    }

    public function testFillExceptionReleasesTheLeaseAndIsRethrown(): void
    {
        $c = $this->client();
        $socket = $this->harness()->socket;
        $id = self::unique();
        $released = $c->stats()['fills']['leasesReleased'];
        $thrown = new OriginDown('origin down');
        $waiter = null;
        try {
            $c->fetch('Session', $id, function () use ($socket, $id, $thrown, &$waiter): string {
                // A waiter in another process parks behind this lease (timeout 3 s, below lease_timeout 5 s) ...
                $waiter = $this->startStep($socket, ['op' => 'fetch', 'key' => 'Session', 'identity' => $id, 'client' => 'w',
                    'timeout' => 3.0, 'fill' => ['value' => ['utf8' => 'the waiter filled'], 'delayMs' => 0]]);
                usleep(200_000);
                throw $thrown; // ... and this fill fails
            });
            $this->fail('the fill\'s exception is rethrown');
        } catch (OriginDown $e) {
            $this->assertSame($thrown, $e, 'the very same exception object');
        }
        $started = hrtime(true);
        $outcome = $this->finish($waiter);
        $this->assertSame(['value' => 'the waiter filled', 'fillCalled' => true], $outcome, 'the waiter got the lease at once');
        $this->assertLessThan(2.0, (hrtime(true) - $started) / 1e9);
        $this->assertSame($released + 1, $c->stats()['fills']['leasesReleased']);
        $this->assertSame('the waiter filled', $c->get('Session', $id));
    }

    public function testFetchReturnsTheFillAndStoresIt(): void
    {
        $c = $this->client();
        $id = self::unique();
        $calls = 0;
        $fill = static function () use (&$calls): string {
            $calls++;
            return "\xff binary fill";
        };
        $this->assertSame("\xff binary fill", $c->fetch('Session', $id, $fill, ttl: 30));
        $this->assertSame("\xff binary fill", $c->fetch('Session', $id, $fill));
        $this->assertSame(1, $calls);
        $this->assertSame('handled:5', $c->fetch('Handled', 5, $fill), 'handler keys are filled by the daemon');
        $this->assertSame(1, $calls);
        $this->assertNull($c->fetch('Session', $id . 'n', static fn (): ?string => null));
        $this->assertNull($c->get('Session', $id . 'n'));
    }

    public function testGetManyIsOneBatchLine(): void
    {
        $harness = $this->harness();
        [$socket, $log] = $this->fakeDaemon('proxy', $harness->socket);
        $c = new Client($socket, 5.0, persistent: false);
        $id = self::unique();
        $c->set('Student', "$id-1", 'one');
        $c->set('Student', "$id-3", "\xff three");
        $results = $c->getMany('Student', ['x' => "$id-1", 'y' => "$id-2", 'z' => "$id-3"]);
        $this->assertSame(['x', 'y', 'z'], array_keys($results));
        $this->assertSame('one', $results['x']->value);
        $this->assertNull($results['y']->value);
        $this->assertSame("\xff three", $results['z']->value);
        $lines = array_values(array_filter(self::events($log), static fn (array $e): bool => isset($e['line'])));
        $this->assertCount(3, $lines, 'two sets and one batch');
        $this->assertStringStartsWith('[{"jsonrpc":"2.0"', $lines[2]['line']);
        $c->close();
    }

    public function testBatchAnswersErrorsInPlace(): void
    {
        $c = $this->client();
        $answers = $c->batch([['ping', []], ['get', ['key' => 'ab', 'identity' => 1]], ['get', ['key' => 'Student', 'identity' => self::unique(), 'lease' => false]]]);
        $this->assertSame('pong', $answers[0]);
        $this->assertInstanceOf(InvalidParamsException::class, $answers[1]);
        $this->assertSame(['hit' => false, 'value' => null], $answers[2]);
    }

    public function testExitInsideAFillHandsTheLeaseOnAtShutdown(): void
    {
        $socket = $this->harness()->socket;
        $id = self::unique();
        $script = $this->tempPath('.php');
        file_put_contents($script, <<<'PHP'
<?php
declare(strict_types=1);
require $argv[1];
$c = new Cached\Client($argv[2]);
$c->ping();
// Runs after the client's own shutdown function (registered by the first request): the process lives on
// for 3 s more, so only the client's shutdown function can have closed the socket in the meantime.
register_shutdown_function(static fn () => sleep(3));
$c->fetch('Session', $argv[3], static function (): string {
    echo "filling\n";
    flush();
    exit(0); // a PHP request that ends inside the fill (exit, a fatal error, max_execution_time)
});
PHP);
        [, $pipes] = $this->spawn($script, [dirname(__DIR__) . '/autoload.php', $socket, $id], '');
        stream_set_timeout($pipes[1], 10);
        $this->assertSame("filling\n", fgets($pipes[1]));
        $started = hrtime(true);
        $value = $this->client()->fetch('Session', $id, static fn (): string => 'the waiter filled', timeout: 2.0);
        $this->assertSame('the waiter filled', $value, 'the lease came to this waiter');
        $this->assertLessThan(1.5, (hrtime(true) - $started) / 1e9, 'at once, not after lease_timeout (5 s) or the process\'s end');
    }
}
