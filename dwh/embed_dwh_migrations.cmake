# Writes OUTPUT: a C array named SYMBOL of { file name, SQL text } from
# INPUTS, ending with { NULL, NULL }. The same idea as
# shared/embed_migrations.cmake, with the symbol as a parameter, so that
# casm-dwh carries its own migrations beside casm's.
set(body "/* Generated from the files in dwh/migrations: do not edit. */\n")
string(APPEND body "#include <stddef.h>\n")
string(APPEND body "#include \"casm_migrate.h\"\n\n")
string(APPEND body "extern const casm_migration_t ${SYMBOL} [];\n\n")
set(entries "")
set(index 0)
foreach(input ${INPUTS})
    get_filename_component(name ${input} NAME)
    file(READ ${input} hex HEX)
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
    string(APPEND body "static const char s_sql_${index} [] = {${hex}0};\n")
    string(APPEND entries "    { \"${name}\", s_sql_${index} },\n")
    math(EXPR index "${index} + 1")
endforeach()
string(APPEND body "\nconst casm_migration_t ${SYMBOL} [] = {\n")
string(APPEND body "${entries}    { NULL, NULL }\n};\n")
file(WRITE ${OUTPUT} "${body}")
