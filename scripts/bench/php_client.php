<?php
// Per-call cost of a get hit from PHP, in one process (the "clients" section of scripts/bench/run.py).
//
//   php scripts/bench/php_client.php SOCKET CALLS ROUNDS KEY [ENTRIES]
//
// Variants, each run for CALLS gets per round, rounds interleaved (floor, plain, floor, ...):
//   floor  stream_socket_client("unix://SOCKET"); per call one get line fwrite()n, one answer line fgets()
//          (the bare round trip: no client library)
//   plain  Cached\Client::get(KEY, i % ENTRIES) (a socket of its own: persistent false)
// The PHP client has no near cache, so there is no "near" variant. The entries KEY/0..ENTRIES-1 must be
// stored already. Prints one JSON object: µs per call, the median round per variant, the best round, and
// every round.

declare(strict_types=1);

require __DIR__ . '/../../clients/php/autoload.php';

function fail(string $message): never
{
    echo json_encode(['language' => 'php', 'error' => substr($message, 0, 800)]), "\n";
    exit(1);
}

function median(array $xs): float
{
    sort($xs);
    $n = count($xs);
    $m = intdiv($n, 2);
    return $n % 2 ? $xs[$m] : ($xs[$m - 1] + $xs[$m]) / 2;
}

if ($argc < 5) {
    fwrite(STDERR, "usage: php_client.php SOCKET CALLS ROUNDS KEY [ENTRIES]\n");
    exit(2);
}
[$socket, $calls, $rounds, $key] = [$argv[1], max(1, (int)$argv[2]), max(1, (int)$argv[3]), $argv[4]];
$entries = $argc > 5 ? max(1, (int)$argv[5]) : 64;

try {
    $raw = stream_socket_client('unix://' . $socket, $errno, $errstr, 5.0);
    if ($raw === false) {
        fail("stream_socket_client: $errstr ($errno)");
    }
    stream_set_timeout($raw, 10);
    $keyJson = json_encode($key);
    $floor = static function (int $i) use ($raw, $keyJson, $entries): string|false {
        fwrite($raw, '{"jsonrpc":"2.0","id":' . $i . ',"method":"get","params":{"key":' . $keyJson
            . ',"identity":' . ($i % $entries) . "}}\n");
        return fgets($raw);
    };
    $client = new Cached\Client($socket, 30.0, false);

    // Check the answers once: every entry a hit, the same bytes through the floor and the client.
    for ($i = 0; $i < $entries; $i++) {
        $line = $floor($i);
        $a = $line === false ? null : json_decode($line, true);
        if (!is_array($a) || ($a['result']['hit'] ?? null) !== true) {
            fail("floor get of $i is not a hit: " . substr((string)$line, 0, 200));
        }
        $r = $client->getResult($key, $i);
        if ($r->hit !== true || $r->value !== $a['result']['value']) {
            fail("plain get of $i: hit " . var_export($r->hit, true) . ', value ' . substr((string)$r->value, 0, 100));
        }
    }

    $variants = [
        'floor' => static function (int $n) use ($floor): void {
            for ($i = 0; $i < $n; $i++) {
                if ($floor($i) === false) {
                    throw new RuntimeException('the floor connection ended');
                }
            }
        },
        'plain' => static function (int $n) use ($client, $key, $entries): void {
            for ($i = 0; $i < $n; $i++) {
                $client->get($key, $i % $entries);
            }
        },
    ];
    foreach ($variants as $run) {
        $run(min(2000, $calls));
    }
    $results = ['floor' => [], 'plain' => []];
    for ($r = 0; $r < $rounds; $r++) {
        foreach ($variants as $name => $run) {
            $t0 = hrtime(true);
            $run($calls);
            $results[$name][] = (hrtime(true) - $t0) / $calls / 1000;
        }
    }
    fclose($raw);
    $client->close();
} catch (Throwable $e) {
    fail(get_class($e) . ': ' . $e->getMessage());
}

$out = ['language' => 'php', 'runtime' => PHP_VERSION, 'callsPerRound' => $calls, 'rounds' => $rounds,
        'entries' => $entries, 'near' => null, 'nearNote' => 'the PHP client has no near cache'];
foreach ($results as $name => $xs) {
    $out[$name] = ['usPerCall' => round(median($xs), 2), 'usPerCallBest' => round(min($xs), 2),
                   'rounds' => array_map(static fn ($x) => round($x, 2), $xs)];
}
echo json_encode($out), "\n";
