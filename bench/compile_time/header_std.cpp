// (a) twin: the standard headers evbus includes, alone.
#include "evbus_std_headers.hpp"

int main() { return 0; }
