<?php

declare(strict_types=1);

namespace Cached;

/**
 * JSON encoding of requests with {@see BigInteger} as bare JSON integers, and decoding of answers.
 *
 * @internal
 */
final class Json
{
    private const FLAGS = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR;

    /**
     * Encodes a value as JSON: arrays that are lists as arrays, other arrays and objects as objects,
     * BigInteger as its digits. $asObject forces an object (for `params`, even when empty).
     *
     * @throws \JsonException for what JSON cannot hold (invalid UTF-8 in a string, INF, NAN, resources)
     */
    public static function encode(mixed $value, bool $asObject = false): string
    {
        if ($value instanceof BigInteger) {
            return $value->digits;
        }
        if ($value instanceof \JsonSerializable) {
            $value = $value->jsonSerialize();
        }
        if (is_object($value) && !$value instanceof \JsonSerializable) {
            $value = get_object_vars($value);
            $asObject = true;
        }
        if (is_array($value)) {
            if (!$asObject && array_is_list($value)) {
                $out = [];
                foreach ($value as $member) {
                    $out[] = self::encode($member);
                }
                return '[' . implode(',', $out) . ']';
            }
            $out = [];
            foreach ($value as $name => $member) {
                $out[] = json_encode((string) $name, self::FLAGS) . ':' . self::encode($member);
            }
            return '{' . implode(',', $out) . '}';
        }
        if (is_resource($value)) {
            throw new \JsonException('a resource cannot travel as JSON');
        }
        return json_encode($value, self::FLAGS);
    }

    /**
     * Decodes an answer line: objects as arrays, integers beyond PHP_INT_MAX as strings.
     *
     * @throws \JsonException
     */
    public static function decode(string $line): mixed
    {
        return json_decode($line, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
    }
}
