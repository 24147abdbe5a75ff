// deepstack/stb.hpp - the stb_image decoder and the stb_image_write encoder, compiled into every
// translation unit that includes deepstack (static functions in namespace deepstack::detail::stb).
//
// Compiled here rather than linked from a system library so that the sanitizer and fuzzer builds
// instrument the decoders, and so that only the formats deepstack accepts exist at all: JPEG, PNG,
// BMP, GIF, TGA and PNM. PSD, HDR and Softimage PIC are left out: their declared sizes cannot be
// checked against the file before decoding, and they are not picture formats a camera or a browser
// produces.
//
// A host may include <stb_image.h> / <stb_image_write.h> itself, before or after deepstack, with or
// without its own implementation: the stb macros it sets are saved and restored around these copies,
// and the include guards are cleared again afterwards, so its own includes see the headers as if
// deepstack had not been there.
#pragma once
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#pragma push_macro("STBI_INCLUDE_STB_IMAGE_H")
#pragma push_macro("STB_IMAGE_IMPLEMENTATION")
#pragma push_macro("STB_IMAGE_STATIC")
#pragma push_macro("STBIDEF")
#pragma push_macro("STBI_ASSERT")
#pragma push_macro("STBI_ONLY_JPEG")
#pragma push_macro("STBI_ONLY_PNG")
#pragma push_macro("STBI_ONLY_BMP")
#pragma push_macro("STBI_ONLY_GIF")
#pragma push_macro("STBI_ONLY_TGA")
#pragma push_macro("STBI_ONLY_PNM")
#pragma push_macro("STBI_NO_JPEG")
#pragma push_macro("STBI_NO_PNG")
#pragma push_macro("STBI_NO_BMP")
#pragma push_macro("STBI_NO_GIF")
#pragma push_macro("STBI_NO_TGA")
#pragma push_macro("STBI_NO_PNM")
#pragma push_macro("STBI_NO_PSD")
#pragma push_macro("STBI_NO_HDR")
#pragma push_macro("STBI_NO_PIC")
#pragma push_macro("STBI_NO_STDIO")
#pragma push_macro("STBI_NO_LINEAR")
#pragma push_macro("STBI_NO_FAILURE_STRINGS")
#pragma push_macro("STBI_FAILURE_USERMSG")
#pragma push_macro("STBI_NO_SIMD")
#pragma push_macro("STBI_INCLUDE_STB_IMAGE_WRITE_H")
#pragma push_macro("STB_IMAGE_WRITE_IMPLEMENTATION")
#pragma push_macro("STB_IMAGE_WRITE_STATIC")
#pragma push_macro("STBIWDEF")
#pragma push_macro("STBIW_ASSERT")
#pragma push_macro("STBI_WRITE_NO_STDIO")

#undef STBI_INCLUDE_STB_IMAGE_H
#undef STBIDEF
#undef STBI_NO_JPEG
#undef STBI_NO_PNG
#undef STBI_NO_BMP
#undef STBI_NO_GIF
#undef STBI_NO_TGA
#undef STBI_NO_PNM
#undef STBI_NO_STDIO
#undef STBI_NO_LINEAR
#undef STBI_NO_FAILURE_STRINGS
#undef STBI_FAILURE_USERMSG
#undef STBI_NO_SIMD
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ASSERT(x) assert(x)
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_NO_LINEAR
#define STBI_NO_HDR

#undef STBI_INCLUDE_STB_IMAGE_WRITE_H
#undef STBIWDEF
#undef STBI_WRITE_NO_STDIO
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBIW_ASSERT(x) assert(x)

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#pragma GCC diagnostic ignored "-Wuseless-cast"
#pragma GCC diagnostic ignored "-Wmissing-declarations"
#endif

namespace deepstack::detail::stb {
#include <stb_image.h>
#include <stb_image_write.h>
}  // namespace deepstack::detail::stb

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#pragma pop_macro("STBI_WRITE_NO_STDIO")
#pragma pop_macro("STBIW_ASSERT")
#pragma pop_macro("STBIWDEF")
#pragma pop_macro("STB_IMAGE_WRITE_STATIC")
#pragma pop_macro("STB_IMAGE_WRITE_IMPLEMENTATION")
#pragma pop_macro("STBI_INCLUDE_STB_IMAGE_WRITE_H")
#pragma pop_macro("STBI_NO_SIMD")
#pragma pop_macro("STBI_FAILURE_USERMSG")
#pragma pop_macro("STBI_NO_FAILURE_STRINGS")
#pragma pop_macro("STBI_NO_LINEAR")
#pragma pop_macro("STBI_NO_STDIO")
#pragma pop_macro("STBI_NO_PIC")
#pragma pop_macro("STBI_NO_HDR")
#pragma pop_macro("STBI_NO_PSD")
#pragma pop_macro("STBI_NO_PNM")
#pragma pop_macro("STBI_NO_TGA")
#pragma pop_macro("STBI_NO_GIF")
#pragma pop_macro("STBI_NO_BMP")
#pragma pop_macro("STBI_NO_PNG")
#pragma pop_macro("STBI_NO_JPEG")
#pragma pop_macro("STBI_ONLY_PNM")
#pragma pop_macro("STBI_ONLY_TGA")
#pragma pop_macro("STBI_ONLY_GIF")
#pragma pop_macro("STBI_ONLY_BMP")
#pragma pop_macro("STBI_ONLY_PNG")
#pragma pop_macro("STBI_ONLY_JPEG")
#pragma pop_macro("STBI_ASSERT")
#pragma pop_macro("STBIDEF")
#pragma pop_macro("STB_IMAGE_STATIC")
#pragma pop_macro("STB_IMAGE_IMPLEMENTATION")
#pragma pop_macro("STBI_INCLUDE_STB_IMAGE_H")
