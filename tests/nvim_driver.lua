-- Drives a headless Neovim against dgemma-ls for tests/test_nvim.py, as a user would:
-- accept an inline completion typed in insert mode, then apply "Fill in the middle".
-- Input: $DGEMMA_NVIM_JOB (JSON). Output: JSON written to job.result; every step is bounded.

local job = vim.json.decode((assert(os.getenv('DGEMMA_NVIM_JOB'), 'DGEMMA_NVIM_JOB is not set')))
local report = { log = {} }

local function finish(failure)
  report.failure = failure
  local file = assert(io.open(job.result, 'w'))
  file:write(vim.json.encode(report))
  file:close()
  vim.cmd(failure and 'cquit!' or 'qall!')
end

local function step(name, fn)
  return function(...)
    local ok, err = pcall(fn, ...)
    if not ok then
      finish(name .. ': ' .. tostring(err))
    end
  end
end

-- Call `next` once `condition()` is truthy, polling without blocking the event loop.
local function when(what, condition, next, timeout_ms)
  local deadline = vim.uv.now() + (timeout_ms or 60000)
  local function poll()
    local ok, value = pcall(condition)
    if ok and value then
      step(what, next)(value)
    elseif vim.uv.now() > deadline then
      finish('timed out waiting for ' .. what)
    else
      vim.defer_fn(poll, 50)
    end
  end
  poll()
end

local function lines(buf)
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, true), '\n') .. '\n'
end

local function open(path, text)
  vim.cmd.edit(vim.fn.fnameescape(path))
  local buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_set_lines(buf, 0, -1, true, vim.split(text:gsub('\n$', ''), '\n', { plain = true }))
  vim.bo[buf].filetype = 'python'
  return buf
end

local ready = false
local client_id

local function start_server(buf)
  client_id = vim.lsp.start({
    name = 'dgemma-ls',
    cmd = job.cmd,
    cmd_env = job.env,
    root_dir = job.root,
    init_options = { dgemma = job.settings },
    handlers = {
      ['window/logMessage'] = function(_, result)
        table.insert(report.log, result.message)
        if result.message:find('model ready', 1, true) then
          ready = true
        elseif result.message:find('could not load', 1, true) then
          finish('the server could not load the model: ' .. result.message)
        end
      end,
    },
  }, { bufnr = buf })
  assert(client_id, 'vim.lsp.start failed')
end

-- 1. Inline completion: type `A` on the comment line, wait for the ghost text, accept it.
local function inline_completion(next)
  local buf = open(job.dir .. '/inline.py', job.inline_text)
  start_server(buf)
  vim.lsp.inline_completion.enable(true, { bufnr = buf })
  when('the model to load', function() return ready end, function()
    report.inline_before = lines(buf)
    vim.api.nvim_win_set_cursor(0, { job.inline_line, 0 })
    vim.api.nvim_feedkeys('A', 'n', false) -- insert mode at the end of the line
    when('an inline completion to be shown', function()
      return vim.api.nvim_get_mode().mode == 'i' and vim.lsp.inline_completion.get()
    end, function()
      when('the completion to be accepted', function() return lines(buf) ~= report.inline_before end, function()
        report.inline_after = lines(buf)
        vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('<Esc>', true, false, true), 'n', false)
        next()
      end, 10000)
    end)
  end, 120000)
end

-- 2. Code action: "Fill in the middle" on a `pass  # TODO` line, applied through resolve.
local function fill_in_the_middle()
  local buf = open(job.dir .. '/fill.py', job.fill_text)
  vim.lsp.buf_attach_client(buf, client_id)
  report.fill_before = lines(buf)
  vim.api.nvim_win_set_cursor(0, { job.fill_line, 6 })
  vim.lsp.buf.code_action({
    apply = true,
    filter = function(action) return vim.startswith(action.title, 'Fill in the middle') end,
  })
  when('the fill to be applied', function() return lines(buf) ~= report.fill_before end, function()
    report.fill_after = lines(buf)
    finish(nil)
  end, 60000)
end

vim.defer_fn(step('inline completion', function() inline_completion(step('fill', fill_in_the_middle)) end), 0)
vim.defer_fn(function() finish('the whole run took longer than ' .. job.timeout_ms .. ' ms') end, job.timeout_ms)
