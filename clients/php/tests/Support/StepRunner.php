<?php

declare(strict_types=1);

namespace Cached\Tests\Support;

use Cached\CachedException;
use Cached\Client;
use Cached\ConnectionException;

/** What a step's fill throws. */
final class FillError extends \RuntimeException
{
}

/**
 * Maps one conformance step onto the PHP client's API and returns what the client did, normalized for
 * {@see Conformance::check()}. Used by ConformanceTest (sync steps) and conformance-step.php (async
 * steps, in a child process of their own).
 *
 * Clients: `a` is a default Client (persistent socket); every other name is `persistent: false`, so
 * that each named client has a connection of its own, as the README asks (two persistent Clients of
 * one path in one process share one socket: that is the point of a persistent socket).
 */
final class StepRunner
{
    /** @var array<string, Client> */
    private array $clients = [];

    public function __construct(private readonly string $socket)
    {
    }

    public function client(string $name): Client
    {
        return $this->clients[$name] ??= new Client($this->socket, 30.0, $name === 'a');
    }

    public function close(): void
    {
        foreach ($this->clients as $name => $client) {
            if ($name !== 'a') {
                $client->close();
            }
        }
        $this->clients = [];
    }

    /**
     * @param array<string, mixed> $step a get/set/delete/deleteHash/fetch/call step
     * @return array<string, mixed>
     */
    public function run(array $step): array
    {
        $client = $this->client($step['client'] ?? 'a');
        $identity = isset($step['identity']) ? Conformance::identity($step['identity']) : null;
        $hashKey = $step['hashKey'] ?? null;
        $hashId = isset($step['hashId']) ? Conformance::identity($step['hashId']) : null;
        $timeout = isset($step['timeout']) ? (float) $step['timeout'] : null;
        try {
            switch ($step['op']) {
                case 'get':
                    $result = $client->getResult($step['key'], $identity, $hashKey, $hashId, $timeout);
                    return ['hit' => $result->hit, 'value' => $result->value, 'stale' => $result->stale];
                case 'set':
                    $ttl = isset($step['ttl']) ? (float) $step['ttl'] : null;
                    $stored = $client->set($step['key'], $identity, Conformance::valueBytes($step['value']), $ttl, $hashKey, $hashId, timeout: $timeout);
                    return ['ok' => $stored];
                case 'delete':
                    return ['deleted' => $client->delete($step['key'], $identity, $hashKey, $hashId, $timeout)];
                case 'deleteHash':
                    return ['deleted' => $client->deleteHash($step['hashKey'], Conformance::identity($step['hashId']), $timeout)];
                case 'call':
                    $params = $step['params'] ?? [];
                    return ['result' => $client->call($step['method'], is_array($params) ? $params : [], $timeout)];
                case 'fetch':
                    return $this->fetch($client, $step, $identity, $hashKey, $hashId, $timeout);
            }
        } catch (ConnectionException $e) {
            return ['error' => ['code' => null, 'message' => 'ConnectionException: ' . $e->getMessage()]];
        } catch (CachedException $e) {
            return ['error' => ['code' => $e->getCode(), 'message' => $e->getMessage()]];
        }
        throw new \RuntimeException('unknown op ' . $step['op']);
    }

    /**
     * @param array<string, mixed> $step
     * @return array<string, mixed>
     */
    private function fetch(Client $client, array $step, mixed $identity, ?string $hashKey, mixed $hashId, ?float $timeout): array
    {
        $fill = $step['fill'];
        $called = false;
        $raised = null;
        $callback = static function () use ($fill, &$called, &$raised): ?string {
            $called = true;
            usleep((int) (($fill['delayMs'] ?? 0) * 1000));
            if (array_key_exists('error', $fill)) {
                throw $raised = new FillError($fill['error']);
            }
            return Conformance::valueBytes($fill['value'] ?? null);
        };
        try {
            $value = $client->fetch($step['key'], $identity, $callback, null, $hashKey, $hashId, $timeout);
        } catch (FillError $e) {
            if ($e !== $raised) {
                return ['error' => ['fill' => 'a different exception object than the fill raised: ' . $e->getMessage()]];
            }
            return ['error' => ['fill' => $e->getMessage()]];
        }
        return ['value' => $value, 'fillCalled' => $called];
    }

    /**
     * An outcome as JSON-safe data (values as base64), for a child process to print.
     *
     * @param array<string, mixed> $outcome
     * @return array<string, mixed>
     */
    public static function export(array $outcome): array
    {
        if (array_key_exists('value', $outcome) && is_string($outcome['value'])) {
            $outcome['value'] = ['base64' => base64_encode($outcome['value'])];
        }
        return $outcome;
    }

    /**
     * @param array<string, mixed> $exported
     * @return array<string, mixed>
     */
    public static function import(array $exported): array
    {
        if (isset($exported['value']['base64'])) {
            $exported['value'] = base64_decode($exported['value']['base64'], true);
        }
        return $exported;
    }
}
