<?php

declare(strict_types=1);

/*
 * A stand-in daemon on a Unix socket for the failure tests (ClientTest), one connection at a time:
 *
 *   php fake-daemon.php SOCKET LOG MODE [UPSTREAM]
 *
 * Prints "ready" once listening. Appends one JSON line per event to LOG: {"conn": N, "line": L} for
 * every request line received (L: its length and first bytes), {"conn": N, "accepted": true}.
 * Connection 1 misbehaves by MODE; every later connection answers properly (get: hit "fresh", ping).
 *
 * - half:    sends half an answer, then waits; if a second request comes on the same connection (a client
 *            that reused it mid-answer), sends the rest of the first answer and a forged answer to the
 *            second with the value "POISON".
 * - garbage: answers a line that is not JSON.
 * - eof:     reads the request and closes without answering.
 * - proxy:   not a fake at all: forwards every connection to the real daemon at UPSTREAM, logging the lines.
 */

[$_, $path, $log, $mode] = $argv + [null, null, null, null];
$upstream = $argv[4] ?? null;
@unlink($path);
$server = stream_socket_server('unix://' . $path, $errno, $errstr);
if ($server === false) {
    fwrite(STDERR, "fake-daemon: $errstr\n");
    exit(1);
}
fwrite(STDOUT, "ready\n");
fflush(STDOUT);

function note(string $log, array $event): void
{
    file_put_contents($log, json_encode($event, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n", FILE_APPEND);
}

function answer(array $request, mixed $result): string
{
    return json_encode(['jsonrpc' => '2.0', 'id' => $request['id'] ?? null, 'result' => $result]) . "\n";
}

function proper(array $request): string
{
    return answer($request, match ($request['method'] ?? '') {
        'ping' => 'pong',
        'get' => ['hit' => true, 'value' => 'fresh'],
        'set' => ['stored' => true],
        default => null,
    });
}

$n = 0;
while (true) {
    $conn = @stream_socket_accept($server, 3600);
    if ($conn === false) {
        continue;
    }
    $n++;
    note($log, ['conn' => $n, 'accepted' => true]);
    if ($mode === 'proxy') {
        $up = stream_socket_client('unix://' . $upstream);
        $pending = '';
        while (true) {
            $read = [$conn, $up];
            $w = $e = null;
            if (stream_select($read, $w, $e, 3600) === false) {
                break;
            }
            if (in_array($up, $read, true)) {
                $data = fread($up, 1 << 20);
                if ($data === '' || $data === false) {
                    break;
                }
                fwrite($conn, $data);
            }
            if (in_array($conn, $read, true)) {
                $data = fread($conn, 1 << 20);
                if ($data === '' || $data === false) {
                    break;
                }
                $pending .= $data;
                while (($end = strpos($pending, "\n")) !== false) {
                    $line = substr($pending, 0, $end);
                    $pending = substr($pending, $end + 1);
                    note($log, ['conn' => $n, 'line' => substr($line, 0, 40), 'length' => strlen($line)]);
                }
                fwrite($up, $data);
            }
        }
        fclose($up);
        fclose($conn);
        continue;
    }
    while (($line = fgets($conn)) !== false) {
        note($log, ['conn' => $n, 'line' => substr($line, 0, 40), 'length' => strlen($line)]);
        $request = json_decode($line, true) ?? [];
        if ($n > 1) {
            fwrite($conn, proper($request));
            continue;
        }
        if ($mode === 'eof') {
            break;
        }
        if ($mode === 'garbage') {
            fwrite($conn, "this is not json\n");
            continue;
        }
        // half
        $full = answer($request, ['hit' => true, 'value' => 'first answer, never to be read in full']);
        fwrite($conn, substr($full, 0, 30));
        $second = fgets($conn); // only if the client reused this connection
        if ($second === false) {
            break;
        }
        note($log, ['conn' => $n, 'line' => substr($second, 0, 40), 'length' => strlen($second)]);
        fwrite($conn, substr($full, 30) . answer(json_decode($second, true) ?? [], ['hit' => true, 'value' => 'POISON']));
    }
    fclose($conn);
}
