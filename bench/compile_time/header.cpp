// (a) The header alone.
#include <evbus/evbus.hpp>

int main() { return 0; }
