import { defineConfig } from "vitest/config"

// Runs the official conformance suite (npm @durable-streams/server-conformance-tests)
// against the server named by CONFORMANCE_TEST_URL, with vitest's defaults, as the
// suite's own CLI runs it.
export default defineConfig({
  test: {
    include: ["conformance/conformance.test.mjs"],
  },
})
