// example-caption MODEL_DIR IMAGE [PROMPT]: the smallest host program - load a Qwen3-VL model
// folder, describe one picture, stream the text to stdout.
#include <deepstack.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE [PROMPT]\n", argv[0]);
        return 1;
    }
    try {
        using namespace deepstack;
        const std::string dir = argv[1];
        const auto model = Model::load(dir);
        const Tokenizer tokenizer = Tokenizer::load(dir + "/tokenizer.json");
        const std::vector<VisualInput> visuals = {prepare_image(*model, load_image(argv[2]))};
        const std::vector<Message> chat = {{"user", {image_part(0), text_part(argc > 3 ? argv[3] : "Describe this image.")}}};
        Session session(model);
        generate(session, tokenizer, build_prompt_ids(tokenizer, model->config, chat, visuals, true), visuals,
                 load_generation_config(dir), [](const std::string& piece) {
                     std::fputs(piece.c_str(), stdout);
                     std::fflush(stdout);
                     return true;  // false would stop the reply here
                 });
        std::puts("");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
