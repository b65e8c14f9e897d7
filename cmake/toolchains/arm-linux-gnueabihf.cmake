# Cross-compile for 32-bit Arm Linux, ARMv7-A hard float with NEON (Raspberry Pi 2/3
# 32-bit OS, BeagleBone, i.MX6/7, Cortex-A7/A9/A15) with Debian/Ubuntu's
# g++-arm-linux-gnueabihf. Tests run under qemu-user:
#   cmake -S . -B build/armv7 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/arm-linux-gnueabihf.cmake
#   cmake --build build/armv7 -j && ctest --test-dir build/armv7
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7-a)

set(DSQ_CROSS_TRIPLE arm-linux-gnueabihf)
set(CMAKE_C_COMPILER ${DSQ_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${DSQ_CROSS_TRIPLE}-g++)

# Debian's armhf compiler defaults to VFPv3-D16 without NEON; ask for it explicitly.
set(CMAKE_C_FLAGS_INIT "-march=armv7-a -mfloat-abi=hard -mfpu=neon")
set(CMAKE_CXX_FLAGS_INIT "-march=armv7-a -mfloat-abi=hard -mfpu=neon")

# No CMAKE_SYSROOT: the compiler knows /usr/arm-linux-gnueabihf.
set(CMAKE_FIND_ROOT_PATH /usr/${DSQ_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-arm;-L;/usr/${DSQ_CROSS_TRIPLE}" CACHE STRING
    "Runs target binaries on the build machine")
