<?php

declare(strict_types=1);

namespace Cached;

/**
 * {@see SimpleCache} could not read from the daemon; getPrevious() is the {@see CachedException}, whose
 * code getCode() repeats.
 */
final class SimpleCacheException extends \RuntimeException implements \Psr\SimpleCache\CacheException
{
    public static function from(CachedException $e): self
    {
        return new self($e->getMessage(), $e->getCode(), $e);
    }
}
