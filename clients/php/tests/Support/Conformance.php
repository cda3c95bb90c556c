<?php

declare(strict_types=1);

namespace Cached\Tests\Support;

use Cached\BigInteger;

/**
 * The rules of clients/conformance/README.md (the PHP twin of clients/conformance/conformance.py):
 * cases, values, identities, and the check of what a client did against a step's `expect`.
 */
final class Conformance
{
    public const STORES = ['embedded', 'redis'];

    /**
     * @return list<array<string, mixed>>
     */
    public static function cases(): array
    {
        $document = json_decode((string) file_get_contents(Harness::conformanceDir() . '/cases.json'), true, 512, JSON_THROW_ON_ERROR);
        if (($document['version'] ?? null) !== 1) {
            throw new \RuntimeException('cases.json: this runner knows version 1');
        }
        return $document['cases'];
    }

    /** A case's value as bytes (null for null). */
    public static function valueBytes(mixed $value): ?string
    {
        if ($value === null) {
            return null;
        }
        if (array_key_exists('utf8', $value)) {
            return $value['utf8'];
        }
        if (array_key_exists('base64', $value)) {
            $bytes = base64_decode($value['base64'], true);
            if ($bytes === false) {
                throw new \RuntimeException('bad base64 in a case');
            }
            return $bytes;
        }
        if (array_key_exists('repeat', $value)) {
            return str_repeat($value['repeat'], (int) $value['count']);
        }
        throw new \RuntimeException('unknown value ' . json_encode($value));
    }

    /** A case's identity: int, string, or {"bigint": "..."} as a BigInteger. */
    public static function identity(mixed $identity): int|string|BigInteger
    {
        if (is_array($identity) && isset($identity['bigint'])) {
            return new BigInteger($identity['bigint']);
        }
        if (is_int($identity) || is_string($identity)) {
            return $identity;
        }
        throw new \RuntimeException('unknown identity ' . json_encode($identity));
    }

    public static function short(mixed $data, int $limit = 160): string
    {
        if (is_array($data) && array_key_exists('value', $data) && is_string($data['value'])) {
            $data['value'] = strlen($data['value']) > 60 ? sprintf('<%d bytes: %s...>', strlen($data['value']), bin2hex(substr($data['value'], 0, 16))) : $data['value'];
        }
        $text = json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE | JSON_PARTIAL_OUTPUT_ON_ERROR);
        $text = is_string($text) ? $text : var_export($data, true);
        return strlen($text) <= $limit ? $text : substr($text, 0, $limit) . sprintf('... (%d chars)', strlen($text));
    }

    public static function jsonMatches(mixed $expected, mixed $actual): bool
    {
        if ($expected === ['any' => true]) {
            return true;
        }
        if (is_array($expected)) {
            if (!is_array($actual) || count($expected) !== count($actual)) {
                return false;
            }
            if (array_is_list($expected) && $expected !== []) {
                if (!array_is_list($actual)) {
                    return false;
                }
            } else {
                $keys = array_keys($expected);
                $other = array_keys($actual);
                sort($keys);
                sort($other);
                if ($keys !== $other) {
                    return false;
                }
            }
            foreach ($expected as $k => $v) {
                if (!self::jsonMatches($v, $actual[$k])) {
                    return false;
                }
            }
            return true;
        }
        if (is_bool($expected) || is_bool($actual) || is_string($expected) || is_string($actual) || $expected === null || $actual === null) {
            return $expected === $actual;
        }
        return $expected == $actual; // numbers: 1 and 1.0 match, as in Python
    }

    /**
     * Null when $actual (what the client did, normalized) satisfies $expect; else what differs.
     *
     * @param array<string, mixed>|null $expect
     * @param array<string, mixed> $actual
     */
    public static function check(?array $expect, array $actual): ?string
    {
        if ($expect === null) {
            return isset($actual['error']) ? 'expected success, got error ' . self::short($actual['error'], 300) : null;
        }
        if (isset($expect['error'])) {
            $want = $expect['error'];
            $got = $actual['error'] ?? null;
            if ($got === null) {
                return 'expected error ' . self::short($want) . ', got ' . self::short($actual, 300);
            }
            if (array_key_exists('fill', $want)) {
                return ($got['fill'] ?? null) === $want['fill'] ? null
                    : 'expected the fill\'s own error ' . json_encode($want['fill']) . ' rethrown, got ' . self::short($got, 300);
            }
            if (($got['code'] ?? null) !== $want['code']) {
                return 'expected error code ' . $want['code'] . ', got ' . self::short($got, 300);
            }
            if (isset($want['messageContains']) && !str_contains((string) ($got['message'] ?? ''), $want['messageContains'])) {
                return 'expected the error message to contain ' . json_encode($want['messageContains']) . ', got ' . json_encode($got['message'] ?? null);
            }
            return null;
        }
        if (isset($actual['error'])) {
            return 'expected ' . self::short($expect, 200) . ', got error ' . self::short($actual['error'], 300);
        }
        $problems = [];
        foreach ($expect as $member => $want) {
            $got = $actual[$member] ?? null;
            if ($member === 'value') {
                $bytes = self::valueBytes($want);
                if ($bytes !== $got) {
                    $problems[] = 'value: expected ' . self::short(['value' => $bytes]) . ', got ' . self::short(['value' => $got]);
                }
            } elseif ($member === 'result' || $member === 'reply') {
                if (!self::jsonMatches($want, $got)) {
                    $problems[] = "$member: expected " . self::short($want, 300) . ', got ' . self::short($got, 300);
                }
            } elseif ($want !== $got) {
                $problems[] = "$member: expected " . json_encode($want) . ', got ' . json_encode($got);
            }
        }
        return $problems === [] ? null : implode('; ', $problems);
    }
}
