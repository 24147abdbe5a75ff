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
// the include guards are cleared again afterwards, and these copies' functions carry other names,
// so its own includes see the headers as if deepstack had not been there.
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
#pragma push_macro("stbi__err")
#pragma push_macro("STB_IMAGE_IMPLEMENTATION")
#pragma push_macro("STB_IMAGE_STATIC")
#pragma push_macro("STBIDEF")
#pragma push_macro("STBI_ASSERT")
#pragma push_macro("STBI_MALLOC")
#pragma push_macro("STBI_REALLOC")
#pragma push_macro("STBI_FREE")
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
#pragma push_macro("INCLUDE_STB_IMAGE_WRITE_H")
#pragma push_macro("STB_IMAGE_WRITE_IMPLEMENTATION")
#pragma push_macro("STB_IMAGE_WRITE_STATIC")
#pragma push_macro("STBIWDEF")
#pragma push_macro("STBIW_ASSERT")
#pragma push_macro("STBI_WRITE_NO_STDIO")

#undef STBI_INCLUDE_STB_IMAGE_H
#undef stbi__err  // a host's implementation defines it as a macro over a function of the same name
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
#undef STBI_MALLOC
#undef STBI_REALLOC
#undef STBI_FREE
#define STBI_MALLOC(size) deepstack_stbi_allocate(size)
#define STBI_REALLOC(p, size) realloc(p, size)
#define STBI_FREE(p) free(p)
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_NO_LINEAR
#define STBI_NO_HDR

#undef INCLUDE_STB_IMAGE_WRITE_H
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
#pragma GCC diagnostic ignored "-Wmissing-declarations"
#endif

// stb declares its functions extern "C": renamed here so that they can never clash with a host's
// own stb functions (C linkage ignores namespaces), and reached through the wrappers below.
#define stbi__unpremultiply_on_load_thread deepstack_stbi__unpremultiply_on_load_thread
#define stbi_convert_iphone_png_to_rgb deepstack_stbi_convert_iphone_png_to_rgb
#define stbi_convert_iphone_png_to_rgb_thread deepstack_stbi_convert_iphone_png_to_rgb_thread
#define stbi_convert_wchar_to_utf8 deepstack_stbi_convert_wchar_to_utf8
#define stbi_failure_reason deepstack_stbi_failure_reason
#define stbi_hdr_to_ldr_gamma deepstack_stbi_hdr_to_ldr_gamma
#define stbi_hdr_to_ldr_scale deepstack_stbi_hdr_to_ldr_scale
#define stbi_image_free deepstack_stbi_image_free
#define stbi_info deepstack_stbi_info
#define stbi_info_from_callbacks deepstack_stbi_info_from_callbacks
#define stbi_info_from_file deepstack_stbi_info_from_file
#define stbi_info_from_memory deepstack_stbi_info_from_memory
#define stbi_is_16_bit deepstack_stbi_is_16_bit
#define stbi_is_16_bit_from_callbacks deepstack_stbi_is_16_bit_from_callbacks
#define stbi_is_16_bit_from_file deepstack_stbi_is_16_bit_from_file
#define stbi_is_16_bit_from_memory deepstack_stbi_is_16_bit_from_memory
#define stbi_is_hdr deepstack_stbi_is_hdr
#define stbi_is_hdr_from_callbacks deepstack_stbi_is_hdr_from_callbacks
#define stbi_is_hdr_from_file deepstack_stbi_is_hdr_from_file
#define stbi_is_hdr_from_memory deepstack_stbi_is_hdr_from_memory
#define stbi_ldr_to_hdr_gamma deepstack_stbi_ldr_to_hdr_gamma
#define stbi_ldr_to_hdr_scale deepstack_stbi_ldr_to_hdr_scale
#define stbi_load deepstack_stbi_load
#define stbi_load_16 deepstack_stbi_load_16
#define stbi_load_16_from_callbacks deepstack_stbi_load_16_from_callbacks
#define stbi_load_16_from_memory deepstack_stbi_load_16_from_memory
#define stbi_load_from_callbacks deepstack_stbi_load_from_callbacks
#define stbi_load_from_file deepstack_stbi_load_from_file
#define stbi_load_from_file_16 deepstack_stbi_load_from_file_16
#define stbi_load_from_memory deepstack_stbi_load_from_memory
#define stbi_load_gif_from_memory deepstack_stbi_load_gif_from_memory
#define stbi_loadf deepstack_stbi_loadf
#define stbi_loadf_from_callbacks deepstack_stbi_loadf_from_callbacks
#define stbi_loadf_from_file deepstack_stbi_loadf_from_file
#define stbi_loadf_from_memory deepstack_stbi_loadf_from_memory
#define stbi_set_flip_vertically_on_load deepstack_stbi_set_flip_vertically_on_load
#define stbi_set_flip_vertically_on_load_thread deepstack_stbi_set_flip_vertically_on_load_thread
#define stbi_set_unpremultiply_on_load deepstack_stbi_set_unpremultiply_on_load
#define stbi_set_unpremultiply_on_load_thread deepstack_stbi_set_unpremultiply_on_load_thread
#define stbi_zlib_decode_buffer deepstack_stbi_zlib_decode_buffer
#define stbi_zlib_decode_malloc deepstack_stbi_zlib_decode_malloc
#define stbi_zlib_decode_malloc_guesssize deepstack_stbi_zlib_decode_malloc_guesssize
#define stbi_zlib_decode_malloc_guesssize_headerflag deepstack_stbi_zlib_decode_malloc_guesssize_headerflag
#define stbi_zlib_decode_noheader_buffer deepstack_stbi_zlib_decode_noheader_buffer
#define stbi_zlib_decode_noheader_malloc deepstack_stbi_zlib_decode_noheader_malloc
#define stbi_flip_vertically_on_write deepstack_stbi_flip_vertically_on_write
#define stbi_write_bmp deepstack_stbi_write_bmp
#define stbi_write_bmp_to_func deepstack_stbi_write_bmp_to_func
#define stbi_write_force_png_filter deepstack_stbi_write_force_png_filter
#define stbi_write_hdr deepstack_stbi_write_hdr
#define stbi_write_hdr_to_func deepstack_stbi_write_hdr_to_func
#define stbi_write_jpg deepstack_stbi_write_jpg
#define stbi_write_jpg_to_func deepstack_stbi_write_jpg_to_func
#define stbi_write_png deepstack_stbi_write_png
#define stbi_write_png_compression_level deepstack_stbi_write_png_compression_level
#define stbi_write_png_to_func deepstack_stbi_write_png_to_func
#define stbi_write_png_to_mem deepstack_stbi_write_png_to_mem
#define stbi_write_tga deepstack_stbi_write_tga
#define stbi_write_tga_to_func deepstack_stbi_write_tga_to_func
#define stbi_write_tga_with_rle deepstack_stbi_write_tga_with_rle
#define stbi_zlib_compress deepstack_stbi_zlib_compress
#define stbiw_convert_wchar_to_utf8 deepstack_stbiw_convert_wchar_to_utf8

namespace deepstack::detail::stb {
inline void* deepstack_stbi_allocate(size_t size);

#include <stb_image.h>
#include <stb_image_write.h>

// stb_image's allocations, zeroed. The JPEG decoder keeps its tables in one allocation and fills
// only those the file defines, yet a scan may name a Huffman table the file never defined: read
// uninitialized, it turns bits into indexes far outside the table's values. In that allocation
// every Huffman table starts as the table of no codes, from which any code is an error ("bad
// huffman code"), so such a file fails to decode instead.
inline void* deepstack_stbi_allocate(size_t size) {
    void* memory = calloc(1, size);
    if (memory && size == sizeof(stbi__jpeg)) {
        stbi__jpeg* jpeg = static_cast<stbi__jpeg*>(memory);
        for (int i = 0; i < 8; ++i) {
            stbi__huffman& table = i < 4 ? jpeg->huff_dc[i] : jpeg->huff_ac[i - 4];
            memset(table.fast, 255, sizeof(table.fast));  // no code of up to FAST_BITS bits
            table.maxcode[17] = 0xffffffff;               // every longer code: not found
        }
    }
    return memory;
}

inline const char* failure_reason() { return deepstack_stbi_failure_reason(); }
inline int info_from_memory(const unsigned char* data, int size, int* w, int* h, int* comp) {
    return deepstack_stbi_info_from_memory(data, size, w, h, comp);
}
inline unsigned char* load_from_memory(const unsigned char* data, int size, int* w, int* h, int* comp, int want_comp) {
    return deepstack_stbi_load_from_memory(data, size, w, h, comp, want_comp);
}
inline void image_free(void* pixels) { deepstack_stbi_image_free(pixels); }
using write_func = void(void* context, void* data, int size);
inline int write_png_to_func(write_func* f, void* context, int w, int h, int comp, const void* data, int stride) {
    return deepstack_stbi_write_png_to_func(f, context, w, h, comp, data, stride);
}
inline int write_jpg_to_func(write_func* f, void* context, int w, int h, int comp, const void* data, int quality) {
    return deepstack_stbi_write_jpg_to_func(f, context, w, h, comp, data, quality);
}
inline int write_tga_to_func(write_func* f, void* context, int w, int h, int comp, const void* data) {
    return deepstack_stbi_write_tga_to_func(f, context, w, h, comp, data);
}
}  // namespace deepstack::detail::stb

#undef stbi__unpremultiply_on_load_thread
#undef stbi_convert_iphone_png_to_rgb
#undef stbi_convert_iphone_png_to_rgb_thread
#undef stbi_convert_wchar_to_utf8
#undef stbi_failure_reason
#undef stbi_hdr_to_ldr_gamma
#undef stbi_hdr_to_ldr_scale
#undef stbi_image_free
#undef stbi_info
#undef stbi_info_from_callbacks
#undef stbi_info_from_file
#undef stbi_info_from_memory
#undef stbi_is_16_bit
#undef stbi_is_16_bit_from_callbacks
#undef stbi_is_16_bit_from_file
#undef stbi_is_16_bit_from_memory
#undef stbi_is_hdr
#undef stbi_is_hdr_from_callbacks
#undef stbi_is_hdr_from_file
#undef stbi_is_hdr_from_memory
#undef stbi_ldr_to_hdr_gamma
#undef stbi_ldr_to_hdr_scale
#undef stbi_load
#undef stbi_load_16
#undef stbi_load_16_from_callbacks
#undef stbi_load_16_from_memory
#undef stbi_load_from_callbacks
#undef stbi_load_from_file
#undef stbi_load_from_file_16
#undef stbi_load_from_memory
#undef stbi_load_gif_from_memory
#undef stbi_loadf
#undef stbi_loadf_from_callbacks
#undef stbi_loadf_from_file
#undef stbi_loadf_from_memory
#undef stbi_set_flip_vertically_on_load
#undef stbi_set_flip_vertically_on_load_thread
#undef stbi_set_unpremultiply_on_load
#undef stbi_set_unpremultiply_on_load_thread
#undef stbi_zlib_decode_buffer
#undef stbi_zlib_decode_malloc
#undef stbi_zlib_decode_malloc_guesssize
#undef stbi_zlib_decode_malloc_guesssize_headerflag
#undef stbi_zlib_decode_noheader_buffer
#undef stbi_zlib_decode_noheader_malloc
#undef stbi_flip_vertically_on_write
#undef stbi_write_bmp
#undef stbi_write_bmp_to_func
#undef stbi_write_force_png_filter
#undef stbi_write_hdr
#undef stbi_write_hdr_to_func
#undef stbi_write_jpg
#undef stbi_write_jpg_to_func
#undef stbi_write_png
#undef stbi_write_png_compression_level
#undef stbi_write_png_to_func
#undef stbi_write_png_to_mem
#undef stbi_write_tga
#undef stbi_write_tga_to_func
#undef stbi_write_tga_with_rle
#undef stbi_zlib_compress
#undef stbiw_convert_wchar_to_utf8

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#pragma pop_macro("STBI_WRITE_NO_STDIO")
#pragma pop_macro("STBIW_ASSERT")
#pragma pop_macro("STBIWDEF")
#pragma pop_macro("STB_IMAGE_WRITE_STATIC")
#pragma pop_macro("STB_IMAGE_WRITE_IMPLEMENTATION")
#pragma pop_macro("INCLUDE_STB_IMAGE_WRITE_H")
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
#pragma pop_macro("STBI_FREE")
#pragma pop_macro("STBI_REALLOC")
#pragma pop_macro("STBI_MALLOC")
#pragma pop_macro("STBI_ASSERT")
#pragma pop_macro("STBIDEF")
#pragma pop_macro("STB_IMAGE_STATIC")
#pragma pop_macro("STB_IMAGE_IMPLEMENTATION")
#pragma pop_macro("STBI_INCLUDE_STB_IMAGE_H")
#undef stbi__err
#pragma pop_macro("stbi__err")
