<?php

declare(strict_types=1);

namespace Cached;

/**
 * An invalid PSR-16 key or TTL given to {@see SimpleCache}.
 */
final class InvalidArgumentException extends \InvalidArgumentException implements \Psr\SimpleCache\InvalidArgumentException
{
}
