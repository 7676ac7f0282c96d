-- Drives examples/nvim headless for tests/test_nvim_example.py: runs `:WarrenAsk`, records the
-- buffer after every change, waits for the turn, writes the buffer and a JSON report, quits.
-- $WARREN_NVIM_TEST names a JSON file: { cmd, session, prompt, timeout_ms, buffer_file, result_file }.
local out = { snapshots = {} }
local cfg
local ok, err = pcall(function()
  cfg = vim.json.decode(table.concat(vim.fn.readfile(os.getenv("WARREN_NVIM_TEST")), "\n"))
  local warren = require("warren")
  warren.setup({ cmd = cfg.cmd, session = cfg.session })
  local t0 = vim.loop.hrtime()
  vim.cmd("WarrenAsk " .. cfg.prompt)
  local buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_attach(buf, false, {
    on_lines = function()
      local text = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
      table.insert(out.snapshots, { ms = (vim.loop.hrtime() - t0) / 1e6, text = text })
    end,
  })
  out.finished = vim.wait(cfg.timeout_ms, function()
    return vim.b[buf].warren_status ~= "running"
  end, 5)
  out.done_ms = (vim.loop.hrtime() - t0) / 1e6
  out.status = vim.b[buf].warren_status
  out.session_id = vim.b[buf].warren_session
  out.buffer_name = vim.api.nvim_buf_get_name(buf)
  out.filetype = vim.bo[buf].filetype
  vim.fn.writefile(vim.api.nvim_buf_get_lines(buf, 0, -1, false), cfg.buffer_file, "b")
  out.exit_code = warren.stop()
end)
out.error = (not ok) and tostring(err) or nil
if cfg and cfg.result_file then
  vim.fn.writefile({ vim.json.encode(out) }, cfg.result_file)
end
vim.cmd(ok and "qall!" or "cquit!")
