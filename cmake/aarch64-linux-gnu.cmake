# Cross build for 64-bit ARM (the NEON kernels) with Debian's aarch64-linux-gnu toolchain and the
# arm64 multiarch packages of the libraries; the programs run under qemu-aarch64 (ctest uses it as
# the emulator) with the arm64 system libraries of /, not the cross package's own libc under
# /usr/aarch64-linux-gnu: the multiarch libraries bring a libc6:arm64 of another build, and the
# mix (that ld.so, this libc) hung at the first thread. .ci/neon builds and runs the tests this way.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
