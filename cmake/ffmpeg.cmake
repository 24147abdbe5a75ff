# Optional FFmpeg (libavformat, libavcodec, libavutil, libswscale) for reading video files in
# deepstack/video.hpp. Without it, videos are read from folders or lists of frame images.
option(DEEPSTACK_WITH_FFMPEG "Read video files through FFmpeg's libraries when they are found" ON)
if(DEEPSTACK_WITH_FFMPEG)
  pkg_check_modules(FFMPEG QUIET IMPORTED_TARGET libavformat libavcodec libavutil libswscale)
endif()
if(FFMPEG_FOUND)
  deepstack_link_pkg(FFMPEG libavformat libavcodec libavutil libswscale)
  target_compile_definitions(deepstack INTERFACE DEEPSTACK_WITH_FFMPEG)
  message(STATUS "deepstack: FFmpeg found (libavformat ${FFMPEG_libavformat_VERSION}); video files can be read")
else()
  message(STATUS "deepstack: building without FFmpeg; videos must be folders or lists of frames "
                 "(install libavformat-dev libavcodec-dev libswscale-dev and reconfigure to read video files)")
endif()
