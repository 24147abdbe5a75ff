// example-caption MODEL_DIR IMAGE: the smallest host program - open a Qwen3-VL model folder,
// describe one picture greedily, stream the text to stdout.
#include <deepstack.hpp>
#include <cstdio>
int main(int argc, char** argv) {
    deepstack::EngineOptions options;
    options.threads = 2;                          // this engine's threads; the process's OpenMP setting is left alone
    deepstack::Engine engine = deepstack::Engine::open(argv[1], options);   // throws deepstack::Error
    deepstack::Request request;
    request.images = {argv[2]};                   // paths; decoded RGB images and a video are accepted too
    request.prompt = "Describe this image.";
    request.sampling.max_new_tokens = 12;
    request.sampling.temperature = 0;             // greedy
    deepstack::Reply reply = engine.generate(request, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        return true;                              // false stops generation
    });
    std::printf("\n%d prompt tokens, %d generated\n", reply.prompt_tokens, reply.generated_tokens);
}
