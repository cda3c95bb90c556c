<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\Tests\Support\Conformance;
use Cached\Tests\Support\Harness;
use Cached\Tests\Support\StepRunner;
use PHPUnit\Framework\TestCase;

/**
 * Every case of clients/conformance/cases.json, for each store it lists, as its own data set
 * (`embedded-get-miss`, ...), against a real daemon started by clients/conformance/harness.py
 * (`reset` before each case).
 *
 * Async steps run in a child process each (tests/conformance-step.php, its own Client and socket):
 * PHP has no threads, and PHP-FPM workers are separate processes too. The parent waits until the child
 * says it has started (its client made, the request about to go out) before it goes on.
 *
 * The PHP client has no near cache: the cases that require `nearCache` are skipped by name.
 */
final class ConformanceTest extends TestCase
{
    /** What this client offers of the cases' optional features. */
    private const FEATURES = [];

    /**
     * @return iterable<string, array{0: string, 1: array<string, mixed>}>
     */
    public static function cases(): iterable
    {
        $cases = Conformance::cases();
        foreach (Conformance::STORES as $store) {
            foreach ($cases as $case) {
                if (in_array($store, $case['stores'] ?? Conformance::STORES, true)) {
                    yield $store . '-' . $case['name'] => [$store, $case];
                }
            }
        }
    }

    /**
     * @dataProvider cases
     * @param array<string, mixed> $case
     */
    public function testCase(string $store, array $case): void
    {
        $missing = array_diff($case['requires'] ?? [], self::FEATURES);
        if ($missing !== []) {
            $this->markTestSkipped(sprintf('%s needs %s (the PHP client has no near cache)', $case['name'], implode(', ', $missing)));
        }
        $harness = Harness::for($store);
        $harness->command('reset');
        $runner = new StepRunner($harness->socket);
        /** @var array<string, array{0: resource, 1: array<int, resource>, 2: string, 3: array<string, mixed>|null}> $pending */
        $pending = [];
        // One warm child per async step, started together before the case runs.
        $async = count(array_filter($case['steps'], static fn (array $s): bool => isset($s['async'])));
        $warm = self::warm($harness->socket, $async);
        try {
            foreach ($case['steps'] as $index => $step) {
                $label = sprintf('step %d (%s)', $index, Conformance::short($step, 200));
                $op = $step['op'];
                if ($op === 'sleep') {
                    usleep((int) ($step['ms'] * 1000));
                    continue;
                }
                if (in_array($op, ['restart', 'stopRedis', 'startRedis'], true)) {
                    $harness->command($op);
                    continue;
                }
                if ($op === 'redis') {
                    $actual = ['reply' => $harness->command('redis', ['args' => $step['args']])['reply']];
                    $problem = Conformance::check($step['expect'] ?? null, $actual);
                    $this->assertNull($problem, "$label: $problem");
                    continue;
                }
                if ($op === 'await') {
                    [$process, $pipes, $asyncLabel, $expect] = $pending[$step['handle']];
                    unset($pending[$step['handle']]);
                    $actual = self::collect($process, $pipes, $asyncLabel);
                    $problem = Conformance::check($expect, $actual);
                    $this->assertNull($problem, "$asyncLabel (awaited at step $index): $problem");
                    continue;
                }
                if (isset($step['async'])) {
                    $pending[$step['async']] = [...self::start(array_shift($warm), $step), $label, $step['expect'] ?? null];
                    continue;
                }
                $actual = $runner->run($step);
                $problem = Conformance::check($step['expect'] ?? null, $actual);
                $this->assertNull($problem, "$label: $problem");
            }
            $this->assertSame([], array_keys($pending), 'async steps never awaited');
        } finally {
            foreach ([...$pending, ...$warm] as [$process, $pipes]) {
                foreach ($pipes as $pipe) {
                    if (is_resource($pipe)) {
                        fclose($pipe);
                    }
                }
                proc_terminate($process);
                proc_close($process);
            }
            $runner->close();
        }
    }

    /**
     * Starts $n children (tests/conformance-step.php) and waits until each has loaded the client.
     *
     * @return list<array{0: resource, 1: array<int, resource>}>
     */
    private static function warm(string $socket, int $n): array
    {
        $children = [];
        for ($i = 0; $i < $n; $i++) {
            $process = proc_open([PHP_BINARY, __DIR__ . '/conformance-step.php'], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR], $pipes);
            if (!is_resource($process)) {
                throw new \RuntimeException('cannot start conformance-step.php');
            }
            fwrite($pipes[0], json_encode(['socket' => $socket], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES) . "\n");
            fflush($pipes[0]);
            $children[] = [$process, $pipes];
        }
        foreach ($children as [, $pipes]) {
            stream_set_timeout($pipes[1], 20);
            $line = fgets($pipes[1]);
            if ($line !== "{\"ready\":true}\n") {
                throw new \RuntimeException('conformance-step.php did not start: ' . var_export($line, true));
            }
        }
        return $children;
    }

    /**
     * Hands a step to a warm child; returns once it says it has started the step.
     *
     * @param array{0: resource, 1: array<int, resource>} $child
     * @param array<string, mixed> $step
     * @return array{0: resource, 1: array<int, resource>}
     */
    private static function start(array $child, array $step): array
    {
        [$process, $pipes] = $child;
        fwrite($pipes[0], json_encode(['step' => $step], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES) . "\n");
        fflush($pipes[0]);
        $line = fgets($pipes[1]);
        if ($line !== "{\"started\":true}\n") {
            throw new \RuntimeException('conformance-step.php did not start its step: ' . var_export($line, true));
        }
        return [$process, $pipes];
    }

    /**
     * @param resource $process
     * @param array<int, resource> $pipes
     * @return array<string, mixed>
     */
    private static function collect($process, array $pipes, string $label): array
    {
        stream_set_timeout($pipes[1], 60);
        $line = fgets($pipes[1]);
        fclose($pipes[0]); // the child ends (and closes its connection) only now
        fclose($pipes[1]);
        $status = proc_close($process);
        if (!is_string($line)) {
            throw new \RuntimeException("$label: the child printed nothing (exit status $status)");
        }
        $outcome = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        if (isset($outcome['crash'])) {
            throw new \RuntimeException("$label: the child failed: " . $outcome['crash']);
        }
        return StepRunner::import($outcome);
    }
}
