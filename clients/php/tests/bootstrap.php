<?php

declare(strict_types=1);

// Composer's autoloader when there is one (composer install in clients/php), else the package's own.
if (is_file(__DIR__ . '/../vendor/autoload.php')) {
    require __DIR__ . '/../vendor/autoload.php';
} else {
    require __DIR__ . '/../autoload.php';
}
require_once __DIR__ . '/Support/Harness.php';
require_once __DIR__ . '/Support/Conformance.php';
require_once __DIR__ . '/Support/StepRunner.php';
if (class_exists(\PHPUnit\Framework\TestCase::class)) {
    require_once __DIR__ . '/Support/DaemonTestCase.php';
}
