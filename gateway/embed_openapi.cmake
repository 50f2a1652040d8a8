# Writes OUTPUT: the bytes of INPUT (openapi.yaml) as a C array, so that
# the gateway serves the document of exactly the build it is part of.
file(READ ${INPUT} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
set(body "/* Generated from openapi.yaml: do not edit. */\n")
string(APPEND body "#include \"casm_openapi.h\"\n\n")
string(APPEND body "const char casm_openapi_yaml [] = {${hex}0};\n")
string(APPEND body "const size_t casm_openapi_yaml_size =\n")
string(APPEND body "    sizeof casm_openapi_yaml - 1;\n")
file(WRITE ${OUTPUT} "${body}")
