<?php

declare(strict_types=1);

namespace Cached;

/**
 * -32009 deadline exceeded: the request's timeout passed before the daemon could answer (getData(): timeout); a write that was sent may still take effect.
 */
final class DeadlineExceededException extends CachedException
{
}
