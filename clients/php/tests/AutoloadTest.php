<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\Tests\Support\DaemonTestCase;

/**
 * Without Composer: a plain PHP process that requires only clients/php/autoload.php uses the client
 * and Cached\SimpleCache (whose PSR-16 interfaces come from Debian's /usr/share/php) against the daemon.
 */
final class AutoloadTest extends DaemonTestCase
{
    public function testWithoutComposer(): void
    {
        $script = $this->tempPath('.php');
        file_put_contents($script, <<<'PHP'
<?php
declare(strict_types=1);
require $argv[1];
$c = new Cached\Client($argv[2]);
$c->set('Student', 'autoload', "bytes \xff");
$cache = new Cached\SimpleCache($c, 'Session');
$cache->set('psr', ['ok' => true]);
echo json_encode([
    'get' => base64_encode($c->get('Student', 'autoload')),
    'psr' => $cache->get('psr'),
    'interface' => $cache instanceof Psr\SimpleCache\CacheInterface,
    'composer' => class_exists('Composer\Autoload\ClassLoader', false),
    'big' => (string) new Cached\BigInteger('0099999999999999999999'),
]);
PHP);
        [$process, $pipes] = $this->spawn($script, [dirname(__DIR__) . '/autoload.php', $this->harness()->socket], '');
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        $this->assertSame(0, proc_close($process), $err);
        $this->assertSame(['get' => base64_encode("bytes \xff"), 'psr' => ['ok' => true], 'interface' => true, 'composer' => false,
            'big' => '99999999999999999999'], json_decode($out, true), $err);
    }

    public function testComposerJsonMapsTheNamespace(): void
    {
        $composer = json_decode((string) file_get_contents(dirname(__DIR__) . '/composer.json'), true, 512, JSON_THROW_ON_ERROR);
        $this->assertSame('cached/client', $composer['name']);
        $this->assertSame(['Cached\\' => 'src/'], $composer['autoload']['psr-4']);
        $this->assertSame('>=8.1', $composer['require']['php']);
        // PSR-4: every class in src/ is in the file its name says.
        foreach (glob(dirname(__DIR__) . '/src/*.php') ?: [] as $file) {
            $this->assertMatchesRegularExpression('/^(final |abstract )?(class|enum|interface) ' . basename($file, '.php') . '\b/m',
                (string) file_get_contents($file));
            $this->assertStringContainsString('declare(strict_types=1);', (string) file_get_contents($file));
        }
    }
}
