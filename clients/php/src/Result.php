<?php

declare(strict_types=1);

namespace Cached;

/**
 * The answer to a get: whether it was a hit, the value (bytes, or null), whether it is stale.
 */
final class Result
{
    /**
     * @param bool $hit true when the entry was stored (a miss answered by a fill has hit false and a value)
     * @param string|null $value the value's bytes; null when there is no value
     * @param bool $stale true for a hit past its key's ttl (served from stale_ttl or grace)
     * @param string|null $lease the lease token of a miss, when the get asked for one (see {@see Client::getResult()})
     * @param bool $cached false when the daemon says the value it answered was not stored (`"cached": false`)
     */
    public function __construct(
        public readonly bool $hit,
        public readonly ?string $value,
        public readonly bool $stale = false,
        public readonly ?string $lease = null,
        public readonly bool $cached = true,
    ) {
    }
}
