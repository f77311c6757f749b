/* One core instance, so that arm-none-eabi-size reports its RAM as bss. */
#include "smartball_core.h"

sb_core_t sb_instance;
