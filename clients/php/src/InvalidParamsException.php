<?php

declare(strict_types=1);

namespace Cached;

/**
 * -32602 invalid params: a missing, unknown or mistyped parameter, an invalid key or identity, bad base64.
 */
final class InvalidParamsException extends CachedException
{
}
