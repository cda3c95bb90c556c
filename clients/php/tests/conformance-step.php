<?php

declare(strict_types=1);

/*
 * One async step of a conformance case, in a process of its own (as PHP-FPM workers are).
 *
 * Started ahead of time (a warm child: PHP's start-up is not on the step's clock): it reads a first line
 * {"socket": S}, loads the client and prints {"ready": true}; then it reads {"step": {...}}, prints
 * {"started": true} just before it runs the step, and then one line with the outcome (values
 * base64-encoded; see Support/StepRunner.php). It then keeps its connection open until its stdin closes.
 */

require __DIR__ . '/bootstrap.php';

use Cached\Tests\Support\StepRunner;

$first = json_decode((string) fgets(STDIN), true, 512, JSON_THROW_ON_ERROR);
$runner = new StepRunner($first['socket']);
class_exists(\Cached\Client::class);
class_exists(\Cached\Connection::class);
class_exists(\Cached\Result::class);
fwrite(STDOUT, "{\"ready\":true}\n");
fflush(STDOUT);
$line = fgets(STDIN);
if ($line === false) {
    exit(0); // not needed after all
}
$step = json_decode($line, true, 512, JSON_THROW_ON_ERROR)['step'];
$runner->client($step['client'] ?? 'a');
fwrite(STDOUT, "{\"started\":true}\n");
fflush(STDOUT);
try {
    $outcome = StepRunner::export($runner->run($step));
} catch (\Throwable $e) {
    $outcome = ['crash' => get_class($e) . ': ' . $e->getMessage()];
}
fwrite(STDOUT, json_encode($outcome, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n");
fflush(STDOUT);
// Stay alive (and connected) until the parent awaits the step: a process that ended would close its
// connection, and the daemon would hand a lease on by itself, hiding a missing `release`.
fgets(STDIN);
