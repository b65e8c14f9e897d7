# Cross-compile for 64-bit Arm Linux (Raspberry Pi 3/4/5 64-bit OS, Jetson, i.MX8 ...)
# with Debian/Ubuntu's g++-aarch64-linux-gnu. Tests run under qemu-user:
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
#   cmake --build build/aarch64 -j && ctest --test-dir build/aarch64
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(DSQ_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${DSQ_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${DSQ_CROSS_TRIPLE}-g++)

# Debian's cross compilers know their own target directory (/usr/aarch64-linux-gnu);
# no CMAKE_SYSROOT (setting it to that directory breaks the headers search).
set(CMAKE_FIND_ROOT_PATH /usr/${DSQ_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ctest (and try_run) run target binaries through qemu; binfmt need not be registered.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;/usr/${DSQ_CROSS_TRIPLE}" CACHE STRING
    "Runs target binaries on the build machine")
