<?php

declare(strict_types=1);

namespace Cached\Tests\Support;

use Cached\Client;
use PHPUnit\Framework\TestCase;

/**
 * Tests against the real daemon of the harness (embedded store unless a test says otherwise), plus
 * the child processes and stand-ins they start (always stopped by their pid in tearDown).
 */
abstract class DaemonTestCase extends TestCase
{
    /** @var list<array{0: resource, 1: array<int, resource>}> */
    private array $children = [];
    /** @var list<string> */
    private array $tempFiles = [];
    /** @var list<int> daemons this test stopped with SIGSTOP */
    private array $stopped = [];

    protected function tearDown(): void
    {
        foreach ($this->stopped as $pid) {
            posix_kill($pid, SIGCONT);
        }
        foreach ($this->children as [$process, $pipes]) {
            if (!is_resource($process)) {
                continue;
            }
            foreach ($pipes as $pipe) {
                if (is_resource($pipe)) {
                    fclose($pipe);
                }
            }
            $status = proc_get_status($process);
            if ($status['running']) {
                posix_kill($status['pid'], SIGKILL);
            }
            proc_close($process);
        }
        foreach ($this->tempFiles as $file) {
            @unlink($file);
        }
        $this->children = $this->tempFiles = $this->stopped = [];
    }

    protected function harness(string $store = 'embedded'): Harness
    {
        return Harness::for($store);
    }

    protected function client(float $timeout = 10.0, bool $persistent = true, string $store = 'embedded'): Client
    {
        return new Client($this->harness($store)->socket, $timeout, $persistent);
    }

    /** An identity no other test uses (no reset between tests). */
    protected static function unique(string $prefix = 't'): string
    {
        return $prefix . '-' . bin2hex(random_bytes(6));
    }

    protected function tempPath(string $suffix): string
    {
        $path = sys_get_temp_dir() . '/cphp-' . bin2hex(random_bytes(4)) . $suffix;
        $this->tempFiles[] = $path;
        return $path;
    }

    protected function stopDaemon(Harness $harness): int
    {
        $pid = $harness->daemonPid();
        posix_kill($pid, SIGSTOP);
        $this->stopped[] = $pid;
        return $pid;
    }

    protected function continueDaemon(int $pid): void
    {
        posix_kill($pid, SIGCONT);
        $this->stopped = array_values(array_diff($this->stopped, [$pid]));
    }

    /**
     * Starts `php $script ...$args` with pipes; returns [process, pipes].
     *
     * @param list<string> $args
     * @return array{0: resource, 1: array<int, resource>}
     */
    protected function spawn(string $script, array $args = [], ?string $stdin = null, array $env = null): array
    {
        $process = proc_open([PHP_BINARY, $script, ...$args], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        if (!is_resource($process)) {
            throw new \RuntimeException("cannot start $script");
        }
        if ($stdin !== null) {
            fwrite($pipes[0], $stdin);
            fclose($pipes[0]);
        }
        $this->children[] = [$process, $pipes];
        return [$process, $pipes];
    }

    /**
     * A conformance step run in a child process (tests/conformance-step.php); returns its pipes once it
     * says it started. {@see finish()} collects the outcome.
     *
     * @param array<string, mixed> $step
     * @return array<int, resource>
     */
    protected function startStep(string $socket, array $step): array
    {
        [, $pipes] = $this->spawn(__DIR__ . '/../conformance-step.php', [],
            json_encode(['socket' => $socket], JSON_THROW_ON_ERROR) . "\n" . json_encode(['step' => $step], JSON_THROW_ON_ERROR) . "\n");
        stream_set_timeout($pipes[1], 10);
        $line = fgets($pipes[1]) . fgets($pipes[1]);
        if ($line !== "{\"ready\":true}\n{\"started\":true}\n") {
            $this->fail('the child step did not start: ' . var_export($line, true) . ' ' . stream_get_contents($pipes[2]));
        }
        return $pipes;
    }

    /**
     * @param array<int, resource> $pipes
     * @return array<string, mixed>
     */
    protected function finish(array $pipes, float $timeout = 30): array
    {
        stream_set_timeout($pipes[1], (int) ceil($timeout));
        $line = fgets($pipes[1]);
        if (!is_string($line)) {
            $this->fail('the child step printed nothing: ' . stream_get_contents($pipes[2]));
        }
        $outcome = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        $this->assertArrayNotHasKey('crash', $outcome);
        return StepRunner::import($outcome);
    }

    /**
     * A stand-in daemon (tests/fake-daemon.php) on a temp socket; returns [socket, log file].
     *
     * @return array{0: string, 1: string}
     */
    protected function fakeDaemon(string $mode, ?string $upstream = null): array
    {
        $socket = $this->tempPath('.sock');
        $log = $this->tempPath('.log');
        touch($log);
        [, $pipes] = $this->spawn(__DIR__ . '/../fake-daemon.php', array_values(array_filter([$socket, $log, $mode, $upstream])));
        stream_set_timeout($pipes[1], 10);
        $line = fgets($pipes[1]);
        if ($line !== "ready\n") {
            $this->fail('fake-daemon.php did not start: ' . var_export($line, true) . ' ' . stream_get_contents($pipes[2]));
        }
        return [$socket, $log];
    }

    /**
     * @return list<array<string, mixed>>
     */
    protected static function events(string $log): array
    {
        $events = [];
        foreach (file($log, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [] as $line) {
            $events[] = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        }
        return $events;
    }
}
