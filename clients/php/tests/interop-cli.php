<?php

declare(strict_types=1);

/*
 * The PHP client's interop program (issue 25): reads JSON lines on stdin, answers one line each.
 *
 *   {"op":"set","socket":S,"key":K,"identity":I,"value":B64}  -> {"ok":true}
 *   {"op":"get","socket":S,"key":K,"identity":I}              -> {"hit":true,"value":B64} | {"hit":false,"value":null}
 *   any error                                                 -> {"error":{"code":C,"message":M}}
 *
 * I is a JSON integer (of any size: beyond PHP_INT_MAX it becomes a Cached\BigInteger) or a string.
 * Optional members: hashKey, hashId (an identity too). Uses only clients/php/autoload.php (no Composer).
 */

require __DIR__ . '/../autoload.php';

use Cached\BigInteger;
use Cached\CachedException;
use Cached\Client;

/**
 * An identity member: the big-integer-as-string decode tells integers from strings by decoding the
 * line a second time without JSON_BIGINT_AS_STRING (a big integer is a float there, a string stays one).
 */
function identity_of(mixed $exact, mixed $loose): int|string|BigInteger
{
    if (is_int($exact)) {
        return $exact;
    }
    if (is_string($exact)) {
        return is_float($loose) ? new BigInteger($exact) : $exact;
    }
    throw new CachedException('the identity must be an integer or a string', CachedException::INVALID_PARAMS);
}

/** @var array<string, Client> $clients */
$clients = [];
while (($line = fgets(STDIN)) !== false) {
    if (trim($line) === '') {
        continue;
    }
    try {
        $request = json_decode($line, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
        $loose = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        if (!is_array($request) || !is_string($request['socket'] ?? null) || !is_string($request['key'] ?? null)) {
            throw new CachedException('a request needs op, socket, key and identity', CachedException::INVALID_PARAMS);
        }
        $client = $clients[$request['socket']] ??= new Client($request['socket']);
        $identity = identity_of($request['identity'] ?? null, $loose['identity'] ?? null);
        $hashKey = $request['hashKey'] ?? null;
        $hashId = array_key_exists('hashId', $request) ? identity_of($request['hashId'], $loose['hashId']) : null;
        switch ($request['op'] ?? null) {
            case 'set':
                $value = is_string($request['value'] ?? null) ? base64_decode($request['value'], true) : false;
                if ($value === false) {
                    throw new CachedException('set needs value: base64', CachedException::INVALID_PARAMS);
                }
                $client->set($request['key'], $identity, $value, hashKey: $hashKey, hashId: $hashId);
                $answer = ['ok' => true];
                break;
            case 'get':
                $result = $client->getResult($request['key'], $identity, $hashKey, $hashId);
                $answer = ['hit' => $result->hit, 'value' => $result->value === null ? null : base64_encode($result->value)];
                break;
            default:
                throw new CachedException('unknown op', CachedException::INVALID_PARAMS);
        }
    } catch (CachedException $e) {
        $answer = ['error' => ['code' => $e->getCode(), 'message' => $e->getMessage()]];
    } catch (\Throwable $e) {
        $answer = ['error' => ['code' => CachedException::INVALID_PARAMS, 'message' => get_class($e) . ': ' . $e->getMessage()]];
    }
    fwrite(STDOUT, json_encode($answer, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n");
    fflush(STDOUT);
}
