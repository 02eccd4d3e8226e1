/** Mount scenarios through kernel NBD devices (QEMU guest with the nbd module). */
import { registerMountScenarios } from "../_support/mount_scenarios.ts";
import { NOT_IN_VM } from "../_support/vm.ts";

registerMountScenarios("nbd", "vm nbd", NOT_IN_VM);
