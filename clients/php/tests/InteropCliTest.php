<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\Tests\Support\DaemonTestCase;

/**
 * tests/interop-cli.php, the program other clients' interop tests drive, against the real daemon
 * (Redis store), with the layout checked in Redis.
 */
final class InteropCliTest extends DaemonTestCase
{
    public function testSetAndGetLines(): void
    {
        $harness = $this->harness('redis');
        $s = $harness->socket;
        $big = '123456789012345678901234567890';
        $lines = [
            ['op' => 'set', 'socket' => $s, 'key' => 'Student', 'identity' => 12, 'value' => base64_encode("\x00\xff php")],
            ['op' => 'get', 'socket' => $s, 'key' => 'Student', 'identity' => 12],
            ['op' => 'get', 'socket' => $s, 'key' => 'Student', 'identity' => 'nobody'],
            ['op' => 'get', 'socket' => $s, 'key' => 'ab', 'identity' => 1],
        ];
        $input = implode("\n", array_map(static fn (array $l): string => json_encode($l), $lines)) . "\n";
        // A big integer identity, and the same digits as a string: JSON cannot come from PHP's encoder here.
        $input .= '{"op":"set","socket":' . json_encode($s) . ',"key":"Session","identity":' . $big . ',"value":"Ymln"}' . "\n";
        $input .= '{"op":"get","socket":' . json_encode($s) . ',"key":"Session","identity":' . $big . '}' . "\n";
        $input .= '{"op":"get","socket":' . json_encode($s) . ',"key":"Session","identity":"' . $big . '1"}' . "\n";
        [$process, $pipes] = $this->spawn(__DIR__ . '/interop-cli.php', [], $input);
        $answers = array_map(static fn (string $l): array => json_decode($l, true),
            array_filter(explode("\n", (string) stream_get_contents($pipes[1]))));
        $this->assertSame(['ok' => true], $answers[0]);
        $this->assertSame(['hit' => true, 'value' => base64_encode("\x00\xff php")], $answers[1]);
        $this->assertSame(['hit' => false, 'value' => null], $answers[2]);
        $this->assertSame(-32602, $answers[3]['error']['code']);
        $this->assertSame(['ok' => true], $answers[4]);
        $this->assertSame(['hit' => true, 'value' => 'Ymln'], $answers[5]);
        $this->assertSame(['hit' => false, 'value' => null], $answers[6]);
        $this->assertCount(7, $answers);
        $this->assertSame(['base64' => base64_encode("\x00\xff php")], $harness->command('redis', ['args' => ['GET', '000STUDENT#0000000012']])['reply']);
        $this->assertSame(['base64' => 'Ymln'], $harness->command('redis', ['args' => ['GET', "000SESSION#$big"]])['reply']);
    }
}
