<?php

declare(strict_types=1);

namespace Cached;

/**
 * One connection to the daemon's Unix socket, with one request in flight at a time.
 *
 * - Persistent (STREAM_CLIENT_PERSISTENT, the default): PHP keeps the socket open across the requests
 *   of one FPM worker, and every Client of that socket path in the process shares it.
 * - Never reused mid-answer: whatever goes wrong while a request is in flight (timeout, broken pipe,
 *   garbage, EOF, an exception thrown from anywhere) closes the socket (fclose, which also removes a
 *   persistent socket from PHP's list, so the next request opens a fresh one). A shutdown function
 *   closes a socket that still has a request in flight, or a lease out in a fetch, when the PHP request
 *   ends in the middle (exit, fatal error, max_execution_time): the next FPM request never reads the
 *   rest of an old answer, and the daemon hands the lease to the next waiter at once.
 * - Before a request, an idle socket is checked: if the daemon closed it (restart, -32001) or anything
 *   unread is there, it is discarded and a fresh one opened (nothing was sent: this is the only retry).
 *   If the very first write on a reused socket fails before any byte went out, the request is sent
 *   once more on a fresh socket. A request that was (partly) sent is never sent again.
 *
 * @internal used by {@see Client}
 */
final class Connection
{
    /** How much longer than a request's `timeout` the client waits for its answer (the daemon answers -32009 at the deadline). */
    public const ANSWER_GRACE = 1.0;
    private const READ_CHUNK = 1 << 20;

    /** @var array<int, resource> sockets with a request in flight, by resource id */
    private static array $inFlight = [];
    /** @var array<int, array{0: resource, 1: int}> sockets whose fetch holds a lease during its fill */
    private static array $leases = [];
    private static bool $shutdownRegistered = false;
    private static ?int $nextId = null;

    /** @var resource|null */
    private $stream = null;

    public function __construct(public readonly string $path, public readonly bool $persistent = true)
    {
    }

    /**
     * The socket this object last used (for tests: the same resource across Clients of one process).
     *
     * @return resource|null
     */
    public function stream()
    {
        return $this->stream !== null && is_resource($this->stream) ? $this->stream : null;
    }

    /**
     * Sends one request and returns its `result`.
     *
     * @param array<string, mixed> $params
     * @throws CachedException the daemon's error answer
     * @throws ConnectionException
     */
    public function request(string $method, array $params, float $timeout): mixed
    {
        $id = self::nextId();
        $line = '{"jsonrpc":"2.0","id":' . $id . ',"method":' . json_encode($method, JSON_THROW_ON_ERROR)
            . ',"params":' . self::encodeParams($params) . "}\n";
        $answer = $this->exchange($line, $timeout, static function (mixed $answer) use ($id): bool {
            return is_array($answer) && !array_is_list($answer) && array_key_exists('id', $answer)
                && ($answer['id'] === $id || ($answer['id'] === null && isset($answer['error'])));
        });
        return $this->resultOf($answer);
    }

    /**
     * Sends requests as one JSON-RPC batch (one line) and returns, in the same order, each one's
     * `result` or its error as a CachedException object (not thrown).
     *
     * @param list<array{0: string, 1: array<string, mixed>}> $requests
     * @return list<mixed>
     * @throws CachedException when the daemon refused the whole batch (e.g. -32001 over max_batch)
     * @throws ConnectionException
     */
    public function batch(array $requests, float $timeout): array
    {
        if ($requests === []) {
            return [];
        }
        $ids = [];
        $parts = [];
        foreach ($requests as [$method, $params]) {
            $id = self::nextId();
            $ids[] = $id;
            $parts[] = '{"jsonrpc":"2.0","id":' . $id . ',"method":' . json_encode($method, JSON_THROW_ON_ERROR)
                . ',"params":' . self::encodeParams($params) . '}';
        }
        $line = '[' . implode(',', $parts) . "]\n";
        $first = $ids[0];
        $answer = $this->exchange($line, $timeout, static function (mixed $answer) use ($first): bool {
            if (!is_array($answer)) {
                return false;
            }
            if (!array_is_list($answer)) {
                return ($answer['id'] ?? false) === null && isset($answer['error']); // the whole batch refused
            }
            foreach ($answer as $member) {
                if (is_array($member) && ($member['id'] ?? null) === $first) {
                    return true;
                }
            }
            return false;
        });
        if (!array_is_list($answer)) {
            $this->resultOf($answer); // throws
        }
        $byId = [];
        foreach ($answer as $member) {
            if (is_array($member) && isset($member['id'])) {
                $byId[$member['id']] = $member;
            }
        }
        $out = [];
        foreach ($ids as $id) {
            $member = $byId[$id] ?? null;
            if ($member === null) {
                $out[] = new CachedException('cached answered the batch without an answer for one of its requests', CachedException::INTERNAL_ERROR);
                continue;
            }
            try {
                $out[] = $this->resultOf($member);
            } catch (CachedException $e) {
                $out[] = $e;
            }
        }
        return $out;
    }

    /**
     * Closes the socket (for a persistent one: for every Client of this path in the process).
     */
    public function close(): void
    {
        if ($this->stream !== null) {
            self::discard($this->stream);
            $this->stream = null;
        }
    }

    /**
     * Marks the socket as holding a lease (a fetch's fill is running): closed at shutdown if still marked.
     */
    public function holdLease(): void
    {
        $stream = $this->stream();
        if ($stream === null) {
            return;
        }
        self::registerShutdown();
        $key = (int) $stream;
        self::$leases[$key] = [$stream, (self::$leases[$key][1] ?? 0) + 1];
    }

    public function dropLease(): void
    {
        foreach (self::$leases as $key => [$stream, $count]) {
            if ($stream === $this->stream || !is_resource($stream)) {
                if ($count <= 1 || !is_resource($stream)) {
                    unset(self::$leases[$key]);
                } else {
                    self::$leases[$key] = [$stream, $count - 1];
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------------

    /**
     * Writes the line and reads lines until $isOurs accepts one; returns it decoded.
     *
     * @param callable(mixed): bool $isOurs
     */
    private function exchange(string $line, float $timeout, callable $isOurs): mixed
    {
        $deadline = self::now() + $timeout + self::ANSWER_GRACE;
        for ($attempt = 0; ; $attempt++) {
            [$stream, $reused] = $this->open(min($timeout, 5.0));
            $key = (int) $stream;
            self::registerShutdown();
            self::$inFlight[$key] = $stream;
            $completed = false;
            try {
                $written = $this->write($stream, $line, $deadline, $writeError);
                if ($written < strlen($line)) {
                    if ($written === 0 && $reused && $attempt === 0) {
                        // Nothing went out on a socket reused from before: the daemon closed it. Once more, fresh.
                        continue;
                    }
                    // The daemon may have refused the line and closed (-32001): its error line is then waiting.
                    $pending = $this->readPendingError($stream);
                    if ($pending !== null) {
                        throw CachedException::fromError($pending['error']);
                    }
                    throw new ConnectionException(sprintf('cached at %s: sending the request failed after %d of %d bytes: %s',
                        $this->path, $written, strlen($line), $writeError));
                }
                while (true) {
                    $text = $this->readLine($stream, $deadline, $timeout);
                    try {
                        $answer = Json::decode($text);
                    } catch (\JsonException $e) {
                        throw new ConnectionException(sprintf('cached at %s answered a line that is not JSON (%s): %s',
                            $this->path, $e->getMessage(), substr($text, 0, 120)), $e);
                    }
                    if ($isOurs($answer)) {
                        $completed = true;
                        break;
                    }
                    if (is_array($answer) && !array_is_list($answer) && isset($answer['method']) && !array_key_exists('id', $answer)) {
                        continue; // a notification (only after a `track` through call())
                    }
                    if (is_array($answer) && (array_key_exists('id', $answer) || array_is_list($answer))) {
                        continue; // the answer of an earlier request that was given up on: skip it
                    }
                    throw new ConnectionException(sprintf('cached at %s answered something that is not a JSON-RPC answer: %s',
                        $this->path, substr($text, 0, 120)));
                }
            } finally {
                unset(self::$inFlight[$key]);
                if (!$completed) {
                    self::discard($stream);
                    $this->stream = null;
                }
            }
            if (is_array($answer) && isset($answer['error']['code']) && is_int($answer['error']['code'])
                && ErrorCode::tryFrom($answer['error']['code'])?->closesConnection()) {
                // The daemon closes the connection after these (or may): open a fresh one next time.
                self::discard($stream);
                $this->stream = null;
            }
            return $answer;
        }
    }

    /**
     * An open, idle socket: this object's, the process's persistent one, or a new one.
     *
     * @return array{0: resource, 1: bool} the socket, and whether it was open before this call
     */
    private function open(float $connectTimeout): array
    {
        if ($this->stream !== null) {
            if (is_resource($this->stream) && self::idle($this->stream)) {
                return [$this->stream, true];
            }
            if (is_resource($this->stream)) {
                self::discard($this->stream);
            }
            $this->stream = null;
        }
        for ($try = 0; $try < 2; $try++) {
            $flags = STREAM_CLIENT_CONNECT | ($this->persistent ? STREAM_CLIENT_PERSISTENT : 0);
            $errno = 0;
            $errstr = '';
            $error = null;
            $stream = self::quietly(fn () => stream_socket_client('unix://' . $this->path, $errno, $errstr, $connectTimeout, $flags), $error);
            if (!is_resource($stream)) {
                throw new ConnectionException(sprintf('cannot connect to cached at %s: %s', $this->path,
                    $errstr !== '' ? $errstr : ($error ?? 'unknown error')));
            }
            // A persistent socket may come from an earlier request of this worker: check it as well.
            if (!$this->persistent || self::idle($stream)) {
                stream_set_blocking($stream, true);
                stream_set_read_buffer($stream, 0);
                stream_set_chunk_size($stream, 65536);
                $this->stream = $stream;
                return [$stream, $this->persistent];
            }
            self::discard($stream);
        }
        throw new ConnectionException(sprintf('cannot connect to cached at %s: the socket PHP kept is not usable', $this->path));
    }

    /**
     * True when nothing is waiting to be read on an idle socket (neither EOF nor stray bytes).
     *
     * @param resource $stream
     */
    private static function idle($stream): bool
    {
        $meta = stream_get_meta_data($stream);
        if ($meta['eof'] || ($meta['unread_bytes'] ?? 0) > 0) {
            return false;
        }
        $read = [$stream];
        $write = $except = null;
        $error = null;
        $ready = self::quietly(static fn () => stream_select($read, $write, $except, 0, 0), $error);
        return $ready === 0;
    }

    /**
     * @param resource $stream
     * @return int bytes written
     */
    private function write($stream, string $line, float $deadline, ?string &$error): int
    {
        $error = null;
        $length = strlen($line);
        $done = 0;
        while ($done < $length) {
            $remaining = $deadline - self::now();
            if ($remaining <= 0) {
                $error = 'timed out';
                return $done;
            }
            self::setTimeout($stream, $remaining);
            $piece = $done === 0 ? $line : substr($line, $done);
            $n = self::quietly(static fn () => fwrite($stream, $piece), $error);
            if ($n === false || $n === 0) {
                if (stream_get_meta_data($stream)['timed_out']) {
                    $error = 'timed out';
                }
                $error ??= 'the socket refused the write';
                return $done;
            }
            $done += $n;
        }
        return $done;
    }

    /**
     * @param resource $stream
     */
    private function readLine($stream, float $deadline, float $timeout): string
    {
        $buffer = '';
        while (true) {
            $remaining = $deadline - self::now();
            if ($remaining <= 0) {
                throw new ConnectionException(sprintf('cached at %s did not answer within %.3f s', $this->path, $timeout));
            }
            self::setTimeout($stream, $remaining);
            $error = null;
            $chunk = self::quietly(static fn () => fgets($stream, self::READ_CHUNK), $error);
            if ($chunk === false || $chunk === '') {
                $meta = stream_get_meta_data($stream);
                if ($meta['timed_out']) {
                    throw new ConnectionException(sprintf('cached at %s did not answer within %.3f s', $this->path, $timeout));
                }
                if ($meta['eof'] || feof($stream)) {
                    throw new ConnectionException(sprintf('cached at %s closed the connection %s', $this->path,
                        $buffer === '' ? 'before answering' : 'in the middle of an answer'));
                }
                throw new ConnectionException(sprintf('reading from cached at %s failed: %s', $this->path, $error ?? 'unknown error'));
            }
            $buffer .= $chunk;
            if ($chunk[-1] === "\n") {
                return $buffer;
            }
        }
    }

    /**
     * After a failed write: an error line the daemon sent before closing (such as -32001 for a line over
     * max_line_bytes), if one is there within a moment.
     *
     * @param resource $stream
     * @return array<mixed>|null
     */
    private function readPendingError($stream): ?array
    {
        try {
            $text = $this->readLine($stream, self::now() + 0.5, 0.5);
            $answer = Json::decode($text);
        } catch (\Throwable) {
            return null;
        }
        if (is_array($answer) && isset($answer['error']) && is_array($answer['error']) && ($answer['id'] ?? null) === null) {
            return $answer;
        }
        return null;
    }

    /**
     * @param mixed $answer one answer object
     */
    private function resultOf(mixed $answer): mixed
    {
        if (!is_array($answer)) {
            throw new CachedException('cached answered something that is not an answer object', CachedException::INTERNAL_ERROR);
        }
        if (isset($answer['error'])) {
            $error = is_array($answer['error']) ? $answer['error'] : ['message' => 'malformed error'];
            throw CachedException::fromError($error);
        }
        if (!array_key_exists('result', $answer)) {
            throw new CachedException('cached answered without a result', CachedException::INTERNAL_ERROR);
        }
        return $answer['result'];
    }

    /**
     * @param array<string, mixed> $params
     */
    private static function encodeParams(array $params): string
    {
        try {
            return Json::encode($params, true);
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException('the request cannot be encoded as JSON: ' . $e->getMessage(), 0, $e);
        }
    }

    /**
     * @param resource $stream
     */
    private static function discard($stream): void
    {
        unset(self::$inFlight[(int) $stream], self::$leases[(int) $stream]);
        if (is_resource($stream)) {
            $error = null;
            self::quietly(static fn () => fclose($stream), $error);
        }
    }

    /**
     * @param resource $stream
     */
    private static function setTimeout($stream, float $seconds): void
    {
        $seconds = max($seconds, 0.001);
        $whole = (int) floor($seconds);
        stream_set_timeout($stream, $whole, (int) (($seconds - $whole) * 1e6));
    }

    private static function registerShutdown(): void
    {
        if (self::$shutdownRegistered) {
            return;
        }
        self::$shutdownRegistered = true;
        register_shutdown_function(static function (): void {
            foreach (self::$inFlight as $stream) {
                self::discard($stream);
            }
            foreach (self::$leases as [$stream]) {
                self::discard($stream);
            }
            self::$inFlight = self::$leases = [];
        });
    }

    private static function nextId(): int
    {
        // Random start: an id is never one a late answer from an earlier PHP request could carry.
        self::$nextId ??= random_int(1, 1 << 40);
        return self::$nextId++;
    }

    private static function now(): float
    {
        return hrtime(true) / 1e9;
    }

    /**
     * Runs $call with PHP's warnings captured (into $error) instead of reported.
     *
     * @template T
     * @param callable(): T $call
     * @return T
     */
    private static function quietly(callable $call, ?string &$error): mixed
    {
        set_error_handler(static function (int $severity, string $message) use (&$error): bool {
            $error = $message;
            return true;
        });
        try {
            return $call();
        } finally {
            restore_error_handler();
        }
    }
}
