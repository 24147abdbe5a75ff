// deepstack/files.hpp - opening the files a caller names as inputs: regular files only, never
// blocking, and small files read whole only below a size cap checked before the first byte is read;
// writing output files with every error reported.
#pragma once
#include "common.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace deepstack {

// Size caps of the small files read whole (checked with fstat before reading): JSON configuration
// files (config.json, preprocessor and generation configs, the safetensors index) and
// tokenizer.json (Qwen3's is 11 MB).
constexpr int64_t kMaxConfigFileBytes = int64_t(16) << 20;
constexpr int64_t kMaxTokenizerFileBytes = int64_t(256) << 20;

namespace detail {

// "a directory", "a FIFO (named pipe)", ... for a file that is not a regular file.
inline const char* file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

inline Error not_regular(const std::string& path, mode_t mode) {
    return Error(path + ": is " + std::string(file_kind(mode)) + ", not a regular file");
}

// A read-only descriptor of a regular file, closed on destruction. The path is checked with stat
// before it is opened (a device is never opened), opened with O_NONBLOCK (a FIFO put in its place
// meanwhile cannot block the open) and checked again with fstat on the descriptor.
class InputFile {
public:
    explicit InputFile(const std::string& path) {
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
        if (!S_ISREG(st.st_mode)) throw not_regular(path, st.st_mode);
        fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd_ < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
        if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd_);
            throw not_regular(path, st.st_mode);
        }
        size_ = int64_t(st.st_size);
    }
    ~InputFile() { ::close(fd_); }
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    int fd() const { return fd_; }
    int64_t size() const { return size_; }

private:
    int fd_ = -1;
    int64_t size_ = 0;
};

// The whole of a regular file of at most `max_bytes` bytes; `what` names the kind of file in the
// message when it is larger ("a JSON configuration file").
inline std::string read_small_file(const std::string& path, int64_t max_bytes, const char* what) {
    InputFile f(path);
    if (f.size() > max_bytes)
        throw Error(path + ": " + std::to_string(f.size()) + " bytes is too large for " + what + " (limit " + std::to_string(max_bytes) + " bytes)");
    std::string text(size_t(f.size()), '\0');
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::read(f.fd(), &text[done], text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw Error(path + ": read failed (" + std::strerror(errno) + ")");
        if (n == 0) break;  // the file shrank meanwhile
        done += size_t(n);
    }
    text.resize(done);
    return text;
}

// Writes `bytes` to `path` (created or truncated); every failure of open, write or close (a full
// disk, /dev/full) is an Error naming the path.
inline void write_file(const std::string& path, const void* bytes, size_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) throw Error(path + ": cannot open for writing (" + std::strerror(errno) + ")");
    const char* p = static_cast<const char*>(bytes);
    for (size_t done = 0; done < size;) {
        const ssize_t n = ::write(fd, p + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const std::string why = n < 0 ? std::strerror(errno) : "nothing written";
            ::close(fd);
            throw Error(path + ": write failed (" + why + ")");
        }
        done += size_t(n);
    }
    if (::close(fd) != 0) throw Error(path + ": write failed (" + std::strerror(errno) + ")");
}

// Whether `path` names an existing file or folder of any kind (a missing optional file is not an
// error; one that exists is then opened with InputFile, which refuses what is not a regular file).
inline bool path_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

}  // namespace detail
}  // namespace deepstack
