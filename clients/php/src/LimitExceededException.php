<?php

declare(strict_types=1);

namespace Cached;

/**
 * -32001 limit exceeded (getData(): limit, value); for an oversized line the daemon closed the connection, and the client discarded it.
 */
final class LimitExceededException extends CachedException
{
}
