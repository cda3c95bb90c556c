<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\BigInteger;
use Cached\CachedException;
use Cached\DeadlineExceededException;
use Cached\ErrorCode;
use Cached\InvalidParamsException;
use Cached\Json;
use Cached\LimitExceededException;
use Cached\StoreUnavailableException;
use PHPUnit\Framework\TestCase;

/** The parts without a daemon: BigInteger, the JSON encoder, error mapping. */
final class UnitTest extends TestCase
{
    public function testBigIntegerValidatesAndCanonicalizes(): void
    {
        $this->assertSame('123456789012345678901234567890', (new BigInteger('123456789012345678901234567890'))->digits);
        $this->assertSame('-98765432109876543210', (string) new BigInteger('-098765432109876543210'));
        $this->assertSame('0', (new BigInteger('-0'))->digits);
        $this->assertSame('7', (new BigInteger('+007'))->digits);
        $this->assertSame('42', (new BigInteger(42))->digits);
        $this->assertTrue((new BigInteger((string) PHP_INT_MAX))->fitsInt());
        $this->assertFalse((new BigInteger('9223372036854775808'))->fitsInt());
        $this->assertSame(PHP_INT_MIN, (new BigInteger((string) PHP_INT_MIN))->toInt());
        $this->assertTrue((new BigInteger('10'))->equals(new BigInteger('010')));
        foreach (['', '-', '1.5', '1e3', ' 1', '1 ', "1\n", '0x10', '--1', 'abc'] as $bad) {
            try {
                new BigInteger($bad);
                $this->fail('accepted ' . var_export($bad, true));
            } catch (\InvalidArgumentException) {
                $this->addToAssertionCount(1);
            }
        }
        $this->expectException(\RangeException::class);
        (new BigInteger('99999999999999999999'))->toInt();
    }

    public function testJsonEncodesBigIntegersAsBareIntegers(): void
    {
        $this->assertSame('{"identity":123456789012345678901234567890,"hashId":-5,"s":"12"}',
            Json::encode(['identity' => new BigInteger('123456789012345678901234567890'), 'hashId' => new BigInteger(-5), 's' => '12'], true));
        $this->assertSame('{}', Json::encode([], true));
        $this->assertSame('[1,[],{"a":null}]', Json::encode([1, [], ['a' => null]]));
        $this->assertSame('{"v":"é/✓\u2028","f":1.0,"n":"\n"}', Json::encode(['v' => "é/✓\u{2028}", 'f' => 1.0, 'n' => "\n"], true));
        $this->assertStringNotContainsString("\n", Json::encode(['line' => "a\nb\r\n"]));
        $this->expectException(\JsonException::class);
        Json::encode(['bad' => "\xff"]);
    }

    public function testJsonDecodesBigIntegersAsStrings(): void
    {
        $this->assertSame(['id' => '123456789012345678901234567890', 'n' => 1], Json::decode('{"id":123456789012345678901234567890,"n":1}'));
    }

    public function testErrorsMapToTheirClasses(): void
    {
        $this->assertInstanceOf(InvalidParamsException::class, CachedException::fromError(['code' => -32602, 'message' => 'm']));
        $this->assertInstanceOf(StoreUnavailableException::class, CachedException::fromError(['code' => -32000, 'message' => 'm']));
        $this->assertInstanceOf(LimitExceededException::class, CachedException::fromError(['code' => -32001, 'message' => 'm']));
        $e = CachedException::fromError(['code' => -32009, 'message' => 'late', 'data' => ['timeout' => 0.2]]);
        $this->assertInstanceOf(DeadlineExceededException::class, $e);
        $this->assertSame(['timeout' => 0.2], $e->getData());
        $this->assertSame('late', $e->getMessage());
        $other = CachedException::fromError(['code' => -32004, 'message' => 'handler']);
        $this->assertSame(CachedException::class, get_class($other));
        $this->assertSame(ErrorCode::HandlerError, $other->getErrorCode());
        $this->assertNull(CachedException::fromError(['code' => 7, 'message' => 'x'])->getErrorCode());
        foreach (ErrorCode::cases() as $code) {
            $this->assertSame($code->value, constant(CachedException::class . '::' . strtoupper(preg_replace('/(?<!^)[A-Z]/', '_$0', $code->name))));
        }
    }
}
