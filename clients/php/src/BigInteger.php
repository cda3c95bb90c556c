<?php

declare(strict_types=1);

namespace Cached;

/**
 * An integer identity of any size, beyond PHP_INT_MAX: held as its decimal digits and sent as a bare
 * JSON integer (so `new BigInteger('123456789012345678901234567890')` addresses the Redis key
 * `000STUDENT#123456789012345678901234567890`, exactly as Python's int of that value does).
 *
 * The digits are validated (an optional `-` then decimal digits) and kept in canonical form
 * (no leading zeros, no `-0`). A string identity (a PHP string) is a different entry.
 */
final class BigInteger implements \Stringable
{
    /** The canonical decimal digits, with a leading `-` when negative. */
    public readonly string $digits;

    /**
     * @param int|string $value an int, or a string of decimal digits with an optional leading `-` (or `+`)
     * @throws \InvalidArgumentException when the string is not a decimal integer
     */
    public function __construct(int|string $value)
    {
        if (is_int($value)) {
            $this->digits = (string) $value;
            return;
        }
        if (preg_match('/\A([+-]?)([0-9]+)\z/', $value, $m) !== 1) {
            throw new \InvalidArgumentException(sprintf('not a decimal integer: "%s"', addcslashes(substr($value, 0, 64), "\0..\37\"\\")));
        }
        $digits = ltrim($m[2], '0');
        if ($digits === '') {
            $this->digits = '0';
        } else {
            $this->digits = ($m[1] === '-' ? '-' : '') . $digits;
        }
    }

    /**
     * Whether the value fits a PHP int (then {@see toInt()} gives it).
     */
    public function fitsInt(): bool
    {
        return (string) (int) $this->digits === $this->digits;
    }

    /**
     * @throws \RangeException when the value is beyond PHP_INT_MIN..PHP_INT_MAX
     */
    public function toInt(): int
    {
        if (!$this->fitsInt()) {
            throw new \RangeException($this->digits . ' does not fit a PHP int');
        }
        return (int) $this->digits;
    }

    public function equals(self $other): bool
    {
        return $this->digits === $other->digits;
    }

    public function __toString(): string
    {
        return $this->digits;
    }
}
