<?php

declare(strict_types=1);

namespace Cached\Tests;

use Cached\Tests\Support\DaemonTestCase;

/**
 * The README's quick start, run as it is written (as if from the repository's root, CACHED_SOCKET set to a
 * real daemon's socket), its output checked against the comments it shows.
 */
final class ReadmeTest extends DaemonTestCase
{
    public function testQuickStartRuns(): void
    {
        $readme = (string) file_get_contents(dirname(__DIR__) . '/README.md');
        $this->assertSame(1, preg_match('/## Quick start\s+```php\n(.*?)```/s', $readme, $m));
        // As if in the repository's root (it requires clients/php/autoload.php): a temp dir whose
        // `clients` is a symlink to the repository's.
        $root = $this->tempPath('');
        mkdir($root);
        symlink(dirname(__DIR__, 2), $root . '/clients');
        $script = $root . '/quickstart.php';
        file_put_contents($script, $m[1]);
        try {
            $env = getenv();
            $env['CACHED_SOCKET'] = $this->harness()->socket;
            [$process, $pipes] = $this->spawn($script, [], '', $env);
            $out = (string) stream_get_contents($pipes[1]);
            $err = (string) stream_get_contents($pipes[2]);
            $this->assertSame(0, proc_close($process), $err);
        } finally {
            unlink($script);
            unlink($root . '/clients');
            rmdir($root);
        }
        $this->assertSame('', $err);
        $this->assertStringStartsWith("{\"name\":\"Ada\"}\n{\"cart\":[1,2]}\nbool(true)\narray(2) {\n  [\"greeting\"]=>\n  array(1) {\n    [\"hello\"]=>\n    string(5) \"world\"\n  }\n  [\"nothing\"]=>\n  string(7) \"default\"\n}\n", $out);
    }
}
