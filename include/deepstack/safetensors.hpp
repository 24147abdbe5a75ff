// deepstack/safetensors.hpp - memory-mapped safetensors files (single or sharded), strictly
// validated, and a small writer used for dumps and for test models.
#pragma once
#include "common.hpp"
#include "files.hpp"
#include "json.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <unordered_map>

namespace deepstack::detail {

// One tensor of a loaded file: a view into the mapping, never a copy.
struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    std::string file;  // the file it lives in, for error messages

    int64_t numel() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
};


inline size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: case DType::I32: return 4;
        case DType::BF16: case DType::F16: return 2;
        case DType::I64: return 8;
        default: return 0;
    }
}

inline bool parse_dtype(const std::string& s, DType& out) {
    static const std::pair<const char*, DType> table[] = {
        {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
        {"I64", DType::I64}, {"I32", DType::I32}};
    for (auto& [name, t] : table)
        if (s == name) { out = t; return true; }
    return false;
}


// How a file's bytes are held in memory.
//   Map:  a read-only mapping of the file (instant open, pages loaded on first touch and shared
//         with other processes through the page cache).
//   Read: the file read once into private anonymous memory, 2 MiB aligned and advised for
//         transparent huge pages, its data area starting on a 64-byte line. When every byte
//         streams through the cores on each token (decode), 2 MiB pages save the TLB misses of
//         4 KiB page-cache mappings: on an AMD EPYC VM a bf16 GEMV over mapped weights ran at
//         20-38 GB/s, over huge pages at 42 GB/s, and at 50-60 GB/s with its rows line-aligned.
enum class FileAccess { Map, Read };


// The header length a safetensors image starts with: 8 bytes, little-endian.
inline uint64_t safetensors_header_length(const uint8_t* len_bytes) {
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
    return header_len;
}

// A read-only view of a whole file that releases itself (see FileAccess).
class MappedFile {
public:
    explicit MappedFile(const std::string& path, FileAccess access = FileAccess::Map) : path_(path) {
        const InputFile f(path);
        size_ = size_t(f.size());
        if (size_ > 0 && access == FileAccess::Map) map_file(f.fd());
        if (size_ > 0 && access == FileAccess::Read) read_file(f.fd());
    }
    // A safetensors image made in memory (benchmark models), held as a file read in would be: 2 MiB
    // pages, data area on a 64-byte line, owned (owned_data) and read-only outside set_writable.
    // header: the image's first bytes (length prefix and JSON); fill writes its data_bytes after them.
    // Without fill the data stays unwritten and unreserved (written later, in parts, by the owner).
    MappedFile(const std::string& name, const std::string& header, size_t data_bytes, const std::function<void(uint8_t*)>& fill)
        : path_(name) {
        size_ = header.size() + data_bytes;
        uint8_t* buf = allocate(header.size() >= 8 ? safetensors_header_length(reinterpret_cast<const uint8_t*>(header.data())) : 0, bool(fill));
        std::memcpy(buf, header.data(), header.size());
        try {
            if (fill) fill(buf + header.size());
        } catch (...) {
            free_region();
            throw;
        }
        protect();
    }
    ~MappedFile() {
        if (mapped_) ::munmap(region_, size_);
        else big_free(region_, region_bytes_);
    }
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    // The bytes when read into this process's own memory (FileAccess::Read), nullptr for a mapping.
    // They are read-only (whole pages protected) except between set_writable(true) and (false).
    uint8_t* owned_data() { return mapped_ ? nullptr : const_cast<uint8_t*>(data_); }
    void set_writable(bool writable) {
        if (!mapped_ && region_ && huge_size(region_bytes_))
            ::mprotect(region_, huge_round(region_bytes_), writable ? PROT_READ | PROT_WRITE : PROT_READ);
    }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    bool is_mapping() const { return mapped_; }

private:
    void map_file(int fd) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) throw Error(path_ + ": mmap failed (" + std::strerror(errno) + ")");
        region_ = p;
        data_ = static_cast<const uint8_t*>(p);
        mapped_ = true;
    }

    // The buffer for size_ bytes whose safetensors header is header_len long. The image lands
    // `shift` bytes into it so that the data area (at 8 + the header length, often 8 mod 64) starts
    // on a 64-byte line: a GEMV whose rows straddle lines splits every vector load and ran 25%
    // slower on an AMD EPYC VM.
    uint8_t* allocate(uint64_t header_len, bool reserve = true) {
        const size_t shift = header_len < size_ ? (64 - (8 + header_len) % 64) % 64 : 0;
        region_bytes_ = size_ + shift;
        uint8_t* region = static_cast<uint8_t*>(big_alloc(region_bytes_, reserve));
        if (!region) throw Error(path_ + ": cannot allocate " + std::to_string(size_) + " bytes to hold it in memory");
        region_ = region;
        data_ = region + shift;
        return region + shift;
    }
    void protect() {
        if (huge_size(region_bytes_)) ::mprotect(region_, huge_round(region_bytes_), PROT_READ);  // whole pages of its own
    }
    void free_region() {  // a constructor failed after allocate: the destructor will not run
        big_free(region_, region_bytes_);
        region_ = nullptr;
    }

    void read_file(int fd) {
        uint8_t len_bytes[8] = {};
        const uint64_t header_len = size_ >= 8 && ::pread(fd, len_bytes, 8, 0) == 8 ? safetensors_header_length(len_bytes) : 0;
        uint8_t* buf = allocate(header_len);
        // 2 MiB pieces on all threads: the page faults (one per huge page) and copies overlap.
        const int64_t pieces = int64_t((size_ + kHugePage - 1) / kHugePage);
        std::string failure;
#pragma omp parallel for schedule(dynamic, 8)
        for (int64_t i = 0; i < pieces; ++i) {
            const size_t begin = size_t(i) * kHugePage, end = std::min(size_, begin + kHugePage);
            for (size_t done = begin; done < end;) {
                const ssize_t n = ::pread(fd, buf + done, end - done, off_t(done));
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) {
                    const std::string why = n < 0 ? "read failed at byte " + std::to_string(done) + " (" + std::strerror(errno) + ")"
                                                  : "file ended at byte " + std::to_string(done) + " while reading " + std::to_string(size_) +
                                                        " (changed on disk?)";
#pragma omp critical(deepstack_read_file)
                    if (failure.empty()) failure = why;
                    break;
                }
                done += size_t(n);
            }
        }
        if (!failure.empty()) {
            free_region();
            throw Error(path_ + ": " + failure);
        }
        protect();
    }

    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    void* region_ = nullptr;  // the mapping (munmap) or the big_alloc buffer (big_free)
    size_t region_bytes_ = 0;  // the big_alloc buffer's size
    bool mapped_ = false;
};

// Parses and validates a safetensors buffer: 8-byte little-endian header length, JSON header,
// then the data area. Every tensor must have a known dtype, a non-negative shape, and a
// [begin, end) inside the data area whose size equals numel * dtype size; ranges must not overlap.
inline std::vector<TensorInfo> parse_safetensors(const uint8_t* buf, size_t size, const std::string& file) {
    if (size < 8) throw Error(file + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header length)");
    const uint64_t header_len = safetensors_header_length(buf);
    if (header_len > size - 8)
        throw Error(file + ": safetensors header length " + std::to_string(header_len) + " runs past the end of the file (" +
                    std::to_string(size) + " bytes)");
    const nlohmann::json header =
        parse_json(std::string_view(reinterpret_cast<const char*>(buf + 8), size_t(header_len)), file, "safetensors header");
    if (!header.is_object()) throw Error(file + ": safetensors header is not a JSON object");
    const uint8_t* data_area = buf + 8 + header_len;
    const size_t data_size = size - 8 - header_len;

    std::vector<TensorInfo> tensors;
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") continue;
        const std::string where = file + ": tensor '" + it.key() + "'";
        const auto& v = it.value();
        if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
            !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
            throw Error(where + ": header entry needs string dtype, array shape and two data_offsets");
        TensorInfo t;
        t.name = it.key();
        t.file = file;
        const std::string dt = v["dtype"].get<std::string>();
        if (!parse_dtype(dt, t.dtype)) throw Error(where + ": unsupported dtype " + dt);
        uint64_t numel = 1;
        for (const auto& d : v["shape"]) {
            if (!d.is_number_unsigned()) throw Error(where + ": shape entries must be non-negative integers");
            uint64_t dim = d.get<uint64_t>();
            // At most 2^60 elements, so numel * dtype size (<= 8) cannot wrap around.
            if (dim > (uint64_t(1) << 60) || (dim != 0 && numel > (uint64_t(1) << 60) / dim))
                throw Error(where + ": shape is too large");
            numel *= dim;
            t.shape.push_back(int64_t(dim));
        }
        const auto& off = v["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            throw Error(where + ": data_offsets must be non-negative integers");
        uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
        if (end < begin) throw Error(where + ": data_offsets are reversed (" + std::to_string(begin) + " > " + std::to_string(end) + ")");
        if (end > data_size)
            throw Error(where + ": data_offsets end " + std::to_string(end) + " is past the end of the data (" +
                        std::to_string(data_size) + " bytes; file truncated?)");
        const uint64_t expected = numel * dtype_size(t.dtype);
        if (end - begin != expected)
            throw Error(where + ": holds " + std::to_string(end - begin) + " bytes but " + dt + " " + shape_str(t.shape) +
                        " needs " + std::to_string(expected));
        t.data = data_area + begin;
        t.nbytes = size_t(end - begin);
        tensors.push_back(std::move(t));
    }
    // Overlap check on the sorted ranges.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->data < b->data; });
    for (size_t i = 1; i < by_offset.size(); ++i)
        if (by_offset[i - 1]->data + by_offset[i - 1]->nbytes > by_offset[i]->data)
            throw Error(file + ": tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name + "' overlap");
    // Bytes after the last tensor are refused (as Hugging Face's safetensors does): they would be
    // read or mapped for nothing, and a file longer than its header says is not what was written.
    size_t used = 0;
    for (const auto& t : tensors) used = std::max(used, size_t(t.data - data_area) + t.nbytes);
    if (used < data_size)
        throw Error(file + ": " + std::to_string(data_size - used) + " bytes after the last tensor's data that no tensor uses");
    return tensors;
}


// All tensors of a model folder: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`. Files stay mapped or read in (FileAccess) for the lifetime of
// the store.
class WeightStore {
public:
    WeightStore() = default;
    // Move-only: a model may rewrite the bytes it owns (owned_bytes), so two stores never share them.
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;
    WeightStore(WeightStore&&) = default;
    WeightStore& operator=(WeightStore&&) = default;

    // Opens one .safetensors file.
    void add_file(const std::string& path, FileAccess access = FileAccess::Map) {
        if (access == FileAccess::Read) {  // check the header on a mapping before reading the whole file into memory
            const detail::MappedFile mapped(path, FileAccess::Map);
            detail::parse_safetensors(mapped.data(), mapped.size(), path);
        }
        auto file = std::make_shared<detail::MappedFile>(path, access);
        if (file->is_mapping()) mappings_.push_back({file->data(), file->size()});
        else if (file->owned_data()) read_files_.push_back(file);
        add_source(file->data(), file->size(), path, file);
    }

    // Adds a safetensors image held in memory (the fuzz target); the store keeps it alive.
    void add_buffer(std::shared_ptr<const std::vector<uint8_t>> bytes, const std::string& name) {
        add_source(bytes->data(), bytes->size(), name, bytes);
    }

    // Adds a safetensors image made in place (benchmark models): header (length prefix and JSON),
    // then fill writes the data_bytes after it. Held as a file read in (FileAccess::Read) is, so a
    // model re-orders its matrices there as in a checkpoint read from disk.
    void add_generated(const std::string& name, const std::string& header, size_t data_bytes, const std::function<void(uint8_t*)>& fill) {
        auto file = std::make_shared<detail::MappedFile>(name, header, data_bytes, fill);
        read_files_.push_back(file);
        add_source(file->data(), file->size(), name, file);
    }

    // Adds a safetensors image made in place whose tensors are written on demand: make(tensor,
    // bytes) writes a tensor the first time get() hands it out (benchmark models larger than the
    // memory: a quantized load then makes, quantizes and releases one tensor after another). The
    // image is otherwise held as add_generated holds it. Loading is single-threaded, as get() is
    // then not const in effect.
    void add_generated_on_demand(const std::string& name, const std::string& header, size_t data_bytes,
                                 std::function<void(const TensorInfo&, uint8_t*)> make) {
        auto file = std::make_shared<detail::MappedFile>(name, header, data_bytes, nullptr);
        read_files_.push_back(file);
        for (const std::string& tensor : add_source(file->data(), file->size(), name, file)) on_demand_[tensor] = {file.get(), make};
    }

    // Opens a model folder (single file or sharded index).
    static WeightStore open_folder(const std::string& dir, FileAccess access = FileAccess::Map) {
        WeightStore ws;
        const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
        struct stat st {};
        if (::stat(single.c_str(), &st) == 0) {
            ws.add_file(single, access);
        } else if (::stat(index.c_str(), &st) == 0) {
            const nlohmann::json j = detail::read_json_file(index);
            if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) throw Error(index + ": missing object 'weight_map'");
            std::vector<std::string> shards;
            for (auto& v : j["weight_map"]) {
                if (!v.is_string()) throw Error(index + ": weight_map values must be file names");
                std::string s = v.get<std::string>();
                if (s.find('\0') != std::string::npos) throw Error(index + ": a shard name holds a NUL byte (must be a plain file name)");
                if (s.find('/') != std::string::npos || s.empty() || s == "." || s == "..")
                    throw Error(index + ": shard name '" + s + "' must be a plain file name");
                if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
            }
            for (auto& s : shards) ws.add_file(dir + "/" + s, access);
            for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
                if (!ws.tensors_.count(it.key()))
                    throw Error(index + ": tensor '" + it.key() + "' is listed but not found in " + it.value().get<std::string>());
        } else {
            throw Error(dir + ": no model.safetensors or model.safetensors.index.json");
        }
        return ws;
    }

    const TensorInfo* find(const std::string& name) const {
        auto it = tensors_.find(name);
        return it == tensors_.end() ? nullptr : &it->second;
    }

    // The tensor `name`, checked for presence, a float dtype and the expected shape (and written
    // first when it is made on demand).
    const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape) const {
        const TensorInfo* t = find(name);
        if (!t) throw Error("missing tensor '" + name + "'" + (first_name_.empty() ? "" : " in " + first_name_));
        if (auto it = on_demand_.find(name); it != on_demand_.end()) {
            detail::MappedFile& file = *it->second.first;
            file.set_writable(true);
            it->second.second(*t, file.owned_data() + (t->data - file.data()));
            file.set_writable(false);
            on_demand_.erase(it);
        }
        if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16)
            throw Error(t->file + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) + ", expected F32, BF16 or F16");
        if (t->shape != shape)
            throw Error(t->file + ": tensor '" + name + "' has shape " + detail::shape_str(t->shape) + ", expected " +
                        detail::shape_str(shape));
        return *t;
    }

    // Gives back the resident pages of bytes read no more, or only here and there (a tensor replaced
    // by a quantized copy: still_read when another view still reads some of it, as a tied
    // embedding does a row per token). In a mapped file the mapping stays valid and reads the file
    // again where touched, so its pages are dropped either way (a tied 2B's embedding: 0.62 GB of
    // RSS after a q4 load otherwise). In memory the store owns (a file read in, an image made by
    // add_generated) they would read as zeros: dropped only when nothing reads them (the caller
    // makes sure). That memory is in 2 MiB pages: the range is first marked MADV_NOHUGEPAGE, or
    // khugepaged would fill it again (zeros) to rebuild the huge pages around it, within seconds.
    // Buffers (add_buffer) are left alone: others may hold them.
    void release(const void* data, size_t nbytes, bool still_read = false) const {
        const auto* b = static_cast<const uint8_t*>(data);
        const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
        const uintptr_t first = (reinterpret_cast<uintptr_t>(b) + page - 1) & ~(page - 1),
                        last = (reinterpret_cast<uintptr_t>(b) + nbytes) & ~(page - 1);
        if (last <= first) return;
        void* const range = reinterpret_cast<void*>(first);
        for (const auto& [base, size] : mappings_)
            if (spans(base, size, b, nbytes)) ::madvise(range, last - first, MADV_DONTNEED);
        if (still_read) return;
        for (const auto& f : read_files_)
            if (spans(f->owned_data(), f->size(), b, nbytes)) {
                ::madvise(range, last - first, MADV_NOHUGEPAGE);
                ::madvise(range, last - first, MADV_DONTNEED);
            }
    }

    // The bytes [data, data + nbytes) when the store owns them (a file read in with
    // FileAccess::Read, or a tensor copied to aligned memory); nullptr for mappings and buffers,
    // which others may share. The loader rewrites matrices there in place (row tiles), between
    // set_writable(true) and set_writable(false): files read in are otherwise read-only.
    void set_writable(bool writable) {
        for (auto& f : read_files_) f->set_writable(writable);
    }
    uint8_t* owned_bytes(const void* data, size_t nbytes) {
        const auto* b = static_cast<const uint8_t*>(data);
        auto within = [&](uint8_t* base, size_t size) { return spans(base, size, b, nbytes) ? base + (b - base) : nullptr; };
        for (const auto& f : read_files_)
            if (uint8_t* p = within(f->owned_data(), f->size())) return p;
        for (const auto& [base, size] : aligned_copies_)
            if (uint8_t* p = within(base, size)) return p;
        return nullptr;
    }

    const std::unordered_map<std::string, TensorInfo>& tensors() const { return tensors_; }
    size_t total_bytes() const { return total_bytes_; }  // bytes of all files/buffers

private:
    // Whether [b, b + n) lies within [base, base + size) (base may be null: never).
    static bool spans(const uint8_t* base, size_t size, const uint8_t* b, size_t n) { return base && b >= base && b + n <= base + size; }

    // Adds the tensors of a safetensors image; returns their names.
    std::vector<std::string> add_source(const uint8_t* data, size_t size, const std::string& name, std::shared_ptr<const void> owner) {
        std::vector<TensorInfo> parsed = detail::parse_safetensors(data, size, name);
        // The format does not force alignment (a header length that is not a multiple of 8, odd
        // offsets): tensors not aligned to their element size are copied to aligned memory, so the
        // kernels never load a misaligned float.
        size_t words = 0;
        auto misaligned = [](const TensorInfo& t) { return reinterpret_cast<uintptr_t>(t.data) % detail::dtype_size(t.dtype) != 0; };
        for (const auto& t : parsed)
            if (misaligned(t)) words += (t.nbytes + 7) / 8;
        if (words) {
            auto arena = std::make_shared<std::vector<uint64_t>>(words);
            uint64_t* p = arena->data();
            aligned_copies_.push_back({reinterpret_cast<uint8_t*>(p), words * 8});
            for (auto& t : parsed)
                if (misaligned(t)) {
                    std::memcpy(p, t.data, t.nbytes);
                    t.data = reinterpret_cast<const uint8_t*>(p);
                    p += (t.nbytes + 7) / 8;
                }
            owners_.push_back(std::move(arena));
        }
        std::vector<std::string> names;
        for (auto& t : parsed) {
            if (tensors_.count(t.name)) throw Error(name + ": tensor '" + t.name + "' also appears in " + tensors_[t.name].file);
            names.push_back(t.name);
            std::string key = t.name;
            tensors_.emplace(std::move(key), std::move(t));
        }
        if (first_name_.empty()) first_name_ = name;
        owners_.push_back(std::move(owner));
        total_bytes_ += size;
        return names;
    }

    std::vector<std::shared_ptr<const void>> owners_;  // mappings / buffers the views point into
    std::vector<std::pair<const uint8_t*, size_t>> mappings_;  // the FileAccess::Map files among them
    std::vector<std::shared_ptr<detail::MappedFile>> read_files_;  // the FileAccess::Read files among them
    std::vector<std::pair<uint8_t*, size_t>> aligned_copies_;    // the arenas of misaligned tensors' copies
    std::unordered_map<std::string, TensorInfo> tensors_;
    // tensors of add_generated_on_demand images not written yet: their image and maker
    mutable std::unordered_map<std::string, std::pair<detail::MappedFile*, std::function<void(const TensorInfo&, uint8_t*)>>> on_demand_;
    std::string first_name_;
    size_t total_bytes_ = 0;
};

// A tensor to write: raw little-endian bytes with dtype and shape.
struct TensorBlob {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

// A float (F32) or integer (I64) tensor to write, copied from v [prod(shape)].
template <typename T>
inline TensorBlob make_blob(const std::string& name, const std::vector<int64_t>& shape, const T* v) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, int64_t>, "make_blob takes float or int64_t data");
    TensorBlob b{name, std::is_same_v<T, float> ? DType::F32 : DType::I64, shape, {}};
    int64_t n = 1;
    for (auto d : shape) n *= d;
    b.bytes.resize(size_t(n) * sizeof(T));
    std::memcpy(b.bytes.data(), v, b.bytes.size());
    return b;
}

// Serialises tensors as one safetensors image (sorted by name, 8-byte aligned header).
inline std::vector<uint8_t> serialize_safetensors(std::vector<TensorBlob> blobs) {
    std::sort(blobs.begin(), blobs.end(), [](auto& a, auto& b) { return a.name < b.name; });
    nlohmann::json header = nlohmann::json::object();
    uint64_t offset = 0;
    for (auto& b : blobs) {
        header[b.name] = {{"dtype", dtype_name(b.dtype)}, {"shape", b.shape}, {"data_offsets", {offset, offset + b.bytes.size()}}};
        offset += b.bytes.size();
    }
    std::string h = header.dump();
    while ((h.size() + 8) % 8) h += ' ';
    std::vector<uint8_t> out;
    out.reserve(8 + h.size() + offset);
    for (int i = 0; i < 8; ++i) out.push_back(uint8_t((uint64_t(h.size()) >> (8 * i)) & 0xff));
    out.insert(out.end(), h.begin(), h.end());
    for (auto& b : blobs) out.insert(out.end(), b.bytes.begin(), b.bytes.end());
    return out;
}

inline void write_safetensors(const std::string& path, std::vector<TensorBlob> blobs) {
    const std::vector<uint8_t> bytes = serialize_safetensors(std::move(blobs));
    detail::write_file(path, bytes.data(), bytes.size());
}

}  // namespace deepstack::detail
