<?php

declare(strict_types=1);

/*
 * The client without Composer: `require 'clients/php/autoload.php';` registers an autoloader for the
 * `Cached\` namespace (src/). For Cached\SimpleCache it also finds the PSR-16 interfaces of Debian's
 * php-psr-simple-cache (/usr/share/php/Psr/SimpleCache) when nothing else has loaded them.
 * With Composer, its own autoloader does all of this (composer.json: PSR-4 `Cached\` => src/).
 */

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'Cached\\')) {
        $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 7)) . '.php';
        if (is_file($file)) {
            require $file;
        }
        return;
    }
    if (str_starts_with($class, 'Psr\\SimpleCache\\')) {
        $file = '/usr/share/php/Psr/SimpleCache/' . substr($class, 16) . '.php';
        if (is_file($file)) {
            require_once $file;
        }
    }
});
