<?php

declare(strict_types=1);

namespace Cached;

/**
 * -32000 store unavailable: Redis cannot be reached; nothing was read or written.
 */
final class StoreUnavailableException extends CachedException
{
}
