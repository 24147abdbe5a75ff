// tools/server/api_error.hpp - an error answered to an HTTP client: its status and the fields of
// OpenAI's error object {"error": {"message", "type", "param", "code"}}.
#pragma once
#include <stdexcept>
#include <string>

namespace deepstack::server {

struct ApiError : std::runtime_error {
    int status;         // HTTP status
    std::string type;   // "invalid_request_error", "authentication_error", ...
    std::string param;  // the request field at fault; empty: none
    std::string code;   // a short machine-readable name; empty: none

    ApiError(int status, std::string type, const std::string& message, std::string param = "", std::string code = "")
        : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
};

// 400: the request is malformed or asks for something the server does not do; `param` names the field.
inline ApiError bad_request(const std::string& message, const std::string& param = "", const std::string& code = "") {
    return ApiError(400, "invalid_request_error", message, param, code);
}

}  // namespace deepstack::server
