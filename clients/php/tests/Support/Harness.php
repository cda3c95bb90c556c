<?php

declare(strict_types=1);

namespace Cached\Tests\Support;

/**
 * clients/conformance/harness.py as a child process: a real cached (and, for the redis store, a private
 * redis-server) in a temp dir, driven by JSON commands on its stdin (clients/conformance/README.md).
 *
 * One harness runs at a time: {@see Harness::for()} stops the other store's before starting one.
 */
final class Harness
{
    /** @var array<string, Harness> */
    private static array $running = [];
    private static bool $shutdownRegistered = false;

    public readonly string $socket;
    public readonly ?string $redisSocket;
    /** @var resource */
    private $process;
    /** @var array<int, resource> */
    private array $pipes;

    private function __construct(public readonly string $store)
    {
        $argv = ['python3', self::conformanceDir() . '/harness.py', '--store', $store, '--bin', self::binary()];
        $process = proc_open($argv, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR], $pipes);
        if (!is_resource($process)) {
            throw new \RuntimeException('cannot start harness.py');
        }
        $this->process = $process;
        $this->pipes = $pipes;
        $line = fgets($pipes[1]);
        $ready = is_string($line) ? json_decode($line, true) : null;
        if (!is_array($ready) || !isset($ready['socket'])) {
            proc_terminate($process);
            throw new \RuntimeException('harness.py did not start: ' . var_export($line, true));
        }
        $this->socket = $ready['socket'];
        $this->redisSocket = $ready['redisSocket'] ?? null;
    }

    /**
     * The running harness of a store (started on first use; the other store's is stopped).
     */
    public static function for(string $store): self
    {
        $harness = self::$running[$store] ?? null;
        if ($harness !== null && proc_get_status($harness->process)['running']) {
            return $harness;
        }
        foreach (self::$running as $other) {
            $other->close();
        }
        self::$running = [];
        if (!self::$shutdownRegistered) {
            self::$shutdownRegistered = true;
            register_shutdown_function(static function (): void {
                foreach (self::$running as $h) {
                    $h->close();
                }
            });
        }
        return self::$running[$store] = new self($store);
    }

    public static function binary(): string
    {
        $bin = getenv('CACHED_BIN');
        if (is_string($bin) && $bin !== '') {
            return $bin;
        }
        // The repository's debug build, as `swift build --show-bin-path` names it.
        $root = dirname(__DIR__, 4);
        $path = trim((string) shell_exec('cd ' . escapeshellarg($root) . ' && swift build --show-bin-path 2>/dev/null'));
        return ($path !== '' ? $path : $root . '/.build/debug') . '/cached';
    }

    public static function conformanceDir(): string
    {
        return dirname(__DIR__, 3) . '/conformance';
    }

    /**
     * Sends one command; returns its answer (throws when the harness says it failed).
     *
     * @param array<string, mixed> $members
     * @return array<string, mixed>
     */
    public function command(string $cmd, array $members = []): array
    {
        $members['cmd'] = $cmd;
        fwrite($this->pipes[0], json_encode($members, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES) . "\n");
        fflush($this->pipes[0]);
        $line = fgets($this->pipes[1]);
        if ($line === false) {
            throw new \RuntimeException("harness.py exited during $cmd");
        }
        $answer = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        if (($answer['ok'] ?? false) !== true) {
            throw new \RuntimeException("harness $cmd failed: " . ($answer['error'] ?? $line));
        }
        return $answer;
    }

    /**
     * The pid of the daemon serving this harness's socket (found by its command line in /proc).
     */
    public function daemonPid(): int
    {
        foreach (glob('/proc/[0-9]*/cmdline') ?: [] as $file) {
            $cmdline = @file_get_contents($file);
            if (!is_string($cmdline) || $cmdline === '') {
                continue;
            }
            $argv = explode("\0", rtrim($cmdline, "\0"));
            $i = array_search('--socket', $argv, true);
            if ($i !== false && ($argv[$i + 1] ?? null) === $this->socket && !str_contains($argv[0], 'python')) {
                return (int) basename(dirname($file));
            }
        }
        throw new \RuntimeException('no daemon found for ' . $this->socket);
    }

    public function close(): void
    {
        if (!is_resource($this->process)) {
            return;
        }
        @fwrite($this->pipes[0], "{\"cmd\":\"quit\"}\n");
        @fflush($this->pipes[0]);
        @fgets($this->pipes[1]);
        foreach ($this->pipes as $pipe) {
            if (is_resource($pipe)) {
                fclose($pipe);
            }
        }
        proc_close($this->process);
    }
}
