-- warren.nvim: a small example client of Warren's JSON-RPC protocol (docs/protocol.md).
--
--   require("warren").setup({ cmd = { "warren", "serve" } })
--   :WarrenAsk Explain this error   -- streams the reply into a scratch buffer
--   :WarrenStop                     -- ends the daemon (also done when Neovim exits)
--
-- One daemon is spawned on first use and shared by every ask. Each ask is a new session:
-- `initialize` (once), `session/create` with `initial_turn = "defer"`, then `turn/start`,
-- whose `session/event` notifications carry the reply as `text_delta` events.
-- Works with Neovim 0.7 and later.

local M = {}

M.config = {
  -- The daemon's command line: `warren serve` (or `{ "/path/to/.venv/bin/warren", "serve" }`).
  cmd = { "warren", "serve" },
  -- Extra `session/create` params: provider, model, system_prompt, provider_params, labels...
  session = {},
}

local daemon = nil -- the running daemon: { job, next_id, pending, turns, ready, stderr, partial }

-- Buffer text -------------------------------------------------------------------------------

-- Appends text to the buffer; text may start mid-line and hold any number of newlines.
local function append(buf, text)
  if not vim.api.nvim_buf_is_valid(buf) then
    return
  end
  local last = vim.api.nvim_buf_line_count(buf)
  local tail = vim.api.nvim_buf_get_lines(buf, last - 1, last, false)[1]
  vim.api.nvim_buf_set_lines(buf, last - 1, last, false, vim.split(tail .. text, "\n", { plain = true }))
end

-- Replaces the whole reply (after a retry told us to drop the abandoned attempt's text).
local function redraw(turn)
  if vim.api.nvim_buf_is_valid(turn.buf) then
    vim.api.nvim_buf_set_lines(turn.buf, 0, -1, false, vim.split(turn.text, "\n", { plain = true }))
  end
end

-- "PROVIDER_ERROR: scripted: scripted auth error (script step 0)"
local function describe(err)
  local code = type(err.data) == "table" and err.data.code or tostring(err.code)
  return string.format("%s: %s", code, err.message)
end

-- The JSON-RPC connection -------------------------------------------------------------------

local function request(method, params, callback)
  daemon.next_id = daemon.next_id + 1
  daemon.pending[daemon.next_id] = callback
  local line = vim.json.encode({ jsonrpc = "2.0", id = daemon.next_id, method = method, params = params })
  vim.fn.chansend(daemon.job, line .. "\n")
end

local function on_event(params)
  local turn = daemon.turns[params.session_id]
  local event = params.event
  if not turn then
    return
  elseif event.type == "text_delta" then
    turn.text = turn.text .. event.delta
    append(turn.buf, event.delta)
  elseif event.type == "retrying" and (event.discard_chars or 0) > 0 then
    -- The failed attempt's streamed text is never committed: drop it (counted in characters).
    local keep = math.max(vim.fn.strchars(turn.text) - event.discard_chars, 0)
    turn.text = vim.fn.strcharpart(turn.text, 0, keep)
    redraw(turn)
  end
end

local function on_line(line)
  local ok, msg = pcall(vim.json.decode, line)
  if not ok or type(msg) ~= "table" then
    return
  end
  if msg.method == "session/event" then
    on_event(msg.params)
  elseif msg.method == nil and msg.id ~= nil then -- a response to one of our requests
    local callback = daemon.pending[msg.id]
    daemon.pending[msg.id] = nil
    if callback then
      callback(msg.error, msg.result)
    end
  end -- no `tool/execute` requests: initialize does not declare that capability
end

local function start()
  local d = { next_id = 0, pending = {}, turns = {}, ready = {}, stderr = {}, partial = "" }
  local ok, job = pcall(vim.fn.jobstart, M.config.cmd, {
    on_stdout = function(_, data)
      -- Chunks split lines anywhere: data[1] continues the previous chunk's last line, and
      -- the last item is a line still incomplete ("" when the chunk ended with a newline).
      data[1] = d.partial .. data[1]
      d.partial = table.remove(data)
      for _, line in ipairs(data) do
        if line ~= "" then
          on_line(line)
        end
      end
    end,
    on_stderr = function(_, data) -- the daemon's log: kept in case it dies
      for _, line in ipairs(data) do
        if line ~= "" then
          table.insert(d.stderr, line)
          if #d.stderr > 20 then
            table.remove(d.stderr, 1)
          end
        end
      end
    end,
    on_exit = function(_, code)
      if daemon == d then
        daemon = nil
      end
      local err = {
        message = string.format("warren exited with status %d. %s", code, d.stderr[#d.stderr] or ""),
        data = { code = "DAEMON_EXITED" },
      }
      for _, callback in pairs(d.pending) do
        callback(err, nil)
      end
      d.pending = {}
    end,
  })
  if not ok or job <= 0 then -- not executable: jobstart raises E475 (or returns -1)
    return nil, string.format("cannot run %s (%s)", table.concat(M.config.cmd, " "), ok and job or job:gsub("^.*E475: ", ""))
  end
  d.job = job
  daemon = d
  request("initialize", { client_info = { name = "warren.nvim", version = "0.1.0" } }, function(err)
    local waiting = d.ready
    d.ready = nil -- from now on, callers go ahead at once
    for _, callback in ipairs(waiting) do
      callback(err)
    end
  end)
  return d
end

-- Calls callback(err) once the daemon is running and initialized.
local function with_daemon(callback)
  if not daemon then
    local _, err = start()
    if err then
      return callback({ message = err, data = { code = "SPAWN_FAILED" } })
    end
  end
  if daemon.ready then
    table.insert(daemon.ready, callback)
  else
    callback(nil)
  end
end

-- Commands ----------------------------------------------------------------------------------

local asks = 0

-- Streams the reply to `prompt` into a new scratch buffer, shown in a split, and returns it.
-- While the turn runs, b:warren_status is "running"; then the turn's stop_reason, or "error".
-- opts.on_done(err, result) is called at the end with the JSON-RPC error or the RunResult.
function M.ask(prompt, opts)
  opts = opts or {}
  asks = asks + 1
  local buf = vim.api.nvim_create_buf(true, true)
  vim.api.nvim_buf_set_name(buf, "warren://" .. asks)
  vim.bo[buf].filetype = "markdown"
  vim.cmd("split")
  vim.api.nvim_win_set_buf(0, buf)
  vim.b[buf].warren_status = "running"
  local turn = { buf = buf, text = "" }

  local function finish(err, result)
    if err then
      append(buf, (turn.text == "" and "" or "\n\n") .. "[warren] " .. describe(err))
    end
    if vim.api.nvim_buf_is_valid(buf) then
      vim.b[buf].warren_status = err and "error" or result.stop_reason
    end
    if opts.on_done then
      opts.on_done(err, result)
    end
    if err then -- scheduled: an error message raised inside a command would abort the caller
      vim.schedule(function()
        vim.notify("warren: " .. describe(err), vim.log.levels.ERROR)
      end)
    end
  end

  with_daemon(function(err)
    if err then
      return finish(err)
    end
    local params = vim.tbl_extend("force", M.config.session, { initial_turn = "defer" })
    request("session/create", params, function(create_err, created)
      if create_err then
        return finish(create_err)
      end
      local session_id = created.session_id
      vim.b[buf].warren_session = session_id
      daemon.turns[session_id] = turn
      request("turn/start", { session_id = session_id, prompt = prompt }, function(turn_err, result)
        if daemon then
          daemon.turns[session_id] = nil
        end
        finish(turn_err, result)
      end)
    end)
  end)
  return buf
end

-- Ends the daemon: end of input makes it interrupt running turns (committing their partial
-- output), answer, and exit. Returns its exit status (0), or nil if none was running.
function M.stop()
  if not daemon then
    return nil
  end
  local job = daemon.job
  vim.fn.chanclose(job, "stdin")
  return vim.fn.jobwait({ job }, 10000)[1]
end

function M.setup(opts)
  M.config = vim.tbl_extend("force", M.config, opts or {}) -- cmd and session are replaced whole
  vim.api.nvim_create_user_command("WarrenAsk", function(args)
    M.ask(args.args)
  end, { nargs = "+", desc = "Ask Warren; the reply streams into a new buffer" })
  vim.api.nvim_create_user_command("WarrenStop", function()
    M.stop()
  end, { desc = "Stop the Warren daemon" })
  vim.api.nvim_create_autocmd("VimLeavePre", {
    group = vim.api.nvim_create_augroup("warren", { clear = true }),
    callback = function()
      M.stop()
    end,
  })
end

return M
